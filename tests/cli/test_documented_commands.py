"""Every command line the README and docs/ show in a ```bash block parses with today's flags (parse only)."""

import re
import shlex
from pathlib import Path

import pytest
from helpers.commands import REPO, load_script

from mim_nnunet.cli import evaluate, main, plan, pretrain

OURS = {"mim_pretrain": pretrain.build_parser, "mim_plan_and_preprocess": plan.build_parser,
        "mim_evaluate": evaluate.build_parser, "mim_nnunet": main.build_parser}
SCRIPTS = ("reproduce_paper", "label_efficiency", "benchmark_pretrain_step", "benchmark_finetune", "benchmark_loader")
SHELL_OPERATORS = {"&&", "||", "|", ";", ">", ">>", "2>&1", "&"}


def bash_blocks(text: str):
    """The ```bash blocks of a markdown text, continuation lines joined."""
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        yield from block.replace("\\\n", " ").splitlines()


def command_lines(line: str):
    """(program, argv) for each of our commands on a shell line, also inside $( ... )."""
    for inner in re.findall(r"\$\(([^()]*)\)", line):
        if not inner.startswith(("which ", "command -v ")):
            yield from command_lines(inner)
    line = re.sub(r"\$\((?:which|command -v) (\w+)\)", r"\1", line)
    line = re.sub(r"\"?\$\([^()]*\)\"?", "SUBSTITUTED", line)
    tokens = shlex.split(line, comments=True)
    for i, token in enumerate(tokens):
        name, prefix = None, []
        if token in OURS:
            name = token
        elif token == "scripts/demo.sh" and i and tokens[i - 1] == "bash":    # passes its arguments to the demo
            name, prefix = "mim_nnunet", ["demo"]
        elif token.startswith("scripts/") and Path(token).stem in SCRIPTS and i and tokens[i - 1].startswith("python"):
            name = Path(token).stem
        if name:
            argv = list(prefix)
            for t in tokens[i + 1:]:
                if t in SHELL_OPERATORS:
                    break
                argv.append(t)
            yield name, argv


def documented():
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    found = []
    for page in pages:
        for line in bash_blocks(page.read_text(encoding="utf-8")):
            for name, argv in command_lines(line):
                found.append((page.relative_to(REPO).as_posix(), name, argv))
    return found


DOCUMENTED = documented()


def parser_for(name):
    return OURS[name]() if name in OURS else load_script(name).build_parser()


def test_the_docs_show_each_command():
    shown = {name for _, name, _ in DOCUMENTED}
    assert shown >= set(OURS) | set(SCRIPTS)
    assert len(DOCUMENTED) >= 30


def test_line_parsing_finds_commands_where_users_write_them():
    assert list(command_lines('eval "$(mim_nnunet env)"   # comment -d 3')) == [("mim_nnunet", ["env"])]
    assert list(command_lines("torchrun --nnodes 2 $(which mim_pretrain) -d 10k && ls")) == \
        [("mim_pretrain", ["-d", "10k"])]
    assert list(command_lines("python scripts/reproduce_paper.py -d 501 -size tiny")) == \
        [("reproduce_paper", ["-d", "501", "-size", "tiny"])]
    assert list(command_lines("bash scripts/demo.sh -setting quick")) == [("mim_nnunet", ["demo", "-setting", "quick"])]


@pytest.mark.parametrize("page,name,argv", DOCUMENTED, ids=[f"{p}: {n} {' '.join(a)}" for p, n, a in DOCUMENTED])
def test_documented_command_parses_without_deprecated_spellings(page, name, argv, capsys):
    parser = parser_for(name)
    try:
        args = parser.parse_args(argv)
        if name in ("mim_pretrain", "mim_plan_and_preprocess"):
            plan.check_size(parser, args)                      # -size is checked against the backbone's sizes
    except SystemExit as exc:
        pytest.fail(f"{page}: `{name} {' '.join(argv)}` does not parse ({exc.code}): {capsys.readouterr().err}")
    assert "deprecated" not in capsys.readouterr().err, f"{page}: `{name} {' '.join(argv)}` uses an old spelling"
