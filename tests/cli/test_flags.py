"""One flag convention: every deprecated spelling still parses to the new flag's value, with a one-line note."""

import argparse
import functools
from pathlib import Path

import pytest
from helpers.commands import load_script

from mim_nnunet.cli import evaluate, main, plan, pretrain
from mim_nnunet.cli.flags import add_flag, deprecated_spellings, deprecation_note


def _parse(parser, argv, capsys):
    args = parser.parse_args(argv)
    return args, capsys.readouterr().err


def test_old_spelling_parses_with_one_note_and_is_hidden_from_help(capsys):
    parser = argparse.ArgumentParser(prog="tool")
    add_flag(parser, "-num_things", aliases=("-things",), type=int, default=1)
    add_flag(parser, "--allow_partial", "--allow-partial", action="store_true")
    add_flag(parser, "-plans_name", "-o", required=True)

    args, err = _parse(parser, ["-plans_name", "A"], capsys)
    assert (args.num_things, args.allow_partial, args.plans_name, err) == (1, False, "A", "")
    args, err = _parse(parser, ["-o", "B", "--allow-partial", "-things", "3"], capsys)
    assert (args.num_things, args.allow_partial, args.plans_name) == (3, True, "B")
    assert err.splitlines() == [
        "tool: note: -o is deprecated and will be removed in the next release; use -plans_name",
        "tool: note: --allow-partial is deprecated and will be removed in the next release; use --allow_partial"]
    text = parser.format_help()
    assert "-plans_name" in text and "-things" in text and "--allow-partial" not in text and "-o " not in text
    with pytest.raises(SystemExit):                       # required is still required, under its new name
        parser.parse_args([])
    assert "the following arguments are required: -plans_name" in capsys.readouterr().err


# (command, arguments with the old spelling, key of deprecated_spellings, destination, value expected)
OLD_SPELLINGS = [
    ("mim_pretrain", ["-d", "1k", "-o", "mine"], "-o", "data_name", "mine"),
    ("mim_pretrain", ["-d", "1k", "--name", "mine"], "--name", "data_name", "mine"),
    ("mim_pretrain", ["-d", "1k", "--allow-partial"], "--allow-partial", "allow_partial", True),
    ("mim_pretrain", ["-d", "1k", "--check_leakage", "3"], "--check_leakage", "check_leakage", "3"),
    ("mim_plan_and_preprocess", ["-d", "1k", "--check_leakage", "3"], "--check_leakage", "check_leakage", "3"),
    ("mim_plan_and_preprocess", ["-d", "1k", "-o", "mine"], "-o", "data_name", "mine"),
    ("mim_plan_and_preprocess", ["-d", "1k", "--name", "mine"], "--name", "data_name", "mine"),
    ("mim_plan_and_preprocess", ["-d", "1k", "--allow-partial"], "--allow-partial", "allow_partial", True),
    ("mim_evaluate", ["-pred", "p", "-ref", "r", "--output", "s.json"], "--output", "o", "s.json"),
    ("mim_nnunet", ["demo", "--workspace", "ws"], "demo --workspace", "workspace", "ws"),
    ("mim_nnunet", ["demo", "--device", "cpu"], "demo --device", "device", "cpu"),
    ("mim_nnunet", ["demo", "--setting", "quick"], "demo --setting", "setting", "quick"),
    ("mim_nnunet", ["demo-data", "--fetch-only"], "demo-data --fetch-only", "fetch_only", True),
    ("mim_nnunet", ["import-official", "f.pth", "--output", "x.safetensors"], "import-official --output", "o",
     "x.safetensors"),
    ("mim_nnunet", ["import-official", "f.pth", "--size", "tiny"], "import-official --size", "size", "tiny"),
    ("mim_nnunet", ["export", "c.pt", "--output", "x.safetensors"], "export --output", "o", "x.safetensors"),
    ("mim_nnunet", ["expand-weights", "-d", "3", "w.safetensors", "--output", "f.pth"], "expand-weights --output",
     "o", "f.pth"),
    ("mim_nnunet", ["plans-variant", "-d", "3", "-o", "W"], "plans-variant -o", "plans_name", "W"),
    ("mim_nnunet", ["plans-variant", "-d", "3", "-plans_name", "W", "--window", "-175", "250"],
     "plans-variant --window", "ct_window", [-175.0, 250.0]),
    ("mim_nnunet", ["plans-variant", "-d", "3", "-plans_name", "W", "--spacing", "1", "1", "2"],
     "plans-variant --spacing", "spacing", [1.0, 1.0, 2.0]),
    ("mim_nnunet", ["plans-variant", "-d", "3", "-plans_name", "W", "--patch", "96", "96", "64"],
     "plans-variant --patch", "patch", [96, 96, 64]),
    ("mim_nnunet", ["convert", "btcv", "src", "--allow-partial"], "convert --allow-partial", "allow_partial", True),
    ("mim_nnunet", ["convert", "btcv", "src", "--split", "nnunet"], "convert --split", "split", "nnunet"),
    ("mim_nnunet", ["splits", "-d", "3", "--scheme", "nnunet"], "splits --scheme", "split", "nnunet"),
    ("mim_nnunet", ["splits", "-d", "3", "--fractions", "0.25", "0.5"], "splits --fractions", "fractions", [0.25, 0.5]),
    ("mim_nnunet", ["splits", "-d", "3", "--seed", "none"], "splits --seed", "seed", None),
    ("mim_nnunet", ["recipe-plans", "-d", "3", "btcv", "-o", "W"], "recipe-plans -o", "plans_name", "W"),
    ("reproduce_paper", ["-d", "501", "--recipe", "btcv"], "--recipe", "recipe", "btcv"),
    ("reproduce_paper", ["-d", "501", "--plans", "nnunet"], "--plans", "plans", "nnunet"),
    ("reproduce_paper", ["-d", "501", "--backbone", "swin"], "--backbone", "backbone", "swin"),
    ("reproduce_paper", ["-d", "501", "--size", "tiny"], "--size", "size", "tiny"),
    ("reproduce_paper", ["-d", "501", "--mim-trainer", "T"], "--mim-trainer", "mim_trainer", "T"),
    ("reproduce_paper", ["-d", "501", "--scratch-trainer", "T"], "--scratch-trainer", "scratch_trainer", "T"),
    ("reproduce_paper", ["-d", "501", "--weights", "w"], "--weights", "weights", "w"),
    ("reproduce_paper", ["-d", "501", "--fractions", "0.5"], "--fractions", "fractions", [0.5]),
    ("reproduce_paper", ["-d", "501", "--seed", "3"], "--seed", "seed", "3"),
    ("reproduce_paper", ["-d", "501", "--split", "nnunet"], "--split", "split", "nnunet"),
    ("reproduce_paper", ["-d", "501", "--device", "cpu"], "--device", "device", "cpu"),
    ("reproduce_paper", ["-d", "501", "--tolerance", "2"], "--tolerance", "tolerance", 2.0),
    ("reproduce_paper", ["-d", "501", "--output", "out"], "--output", "o", "out"),
    ("label_efficiency", ["-d", "3", "--mim", "T"], "--mim", "mim_trainer", "T"),
    ("label_efficiency", ["-d", "3", "--scratch", "T"], "--scratch", "scratch_trainer", "T"),
    ("label_efficiency", ["-d", "3", "--fractions", "0.5"], "--fractions", "fractions", [0.5]),
    ("label_efficiency", ["-d", "3", "--device", "cpu"], "--device", "device", "cpu"),
    ("label_efficiency", ["-d", "3", "--seed", "2"], "--seed", "seed", 2),
    ("label_efficiency", ["-d", "3", "--output", "out"], "--output", "o", "out"),
    ("label_efficiency", ["-d", "3", "--splits-only"], "--splits-only", "splits_only", True),
    ("benchmark_pretrain_step", ["--configs", "hybrid:tiny"], "--configs", "configs", "hybrid:tiny"),
    ("benchmark_pretrain_step", ["--input-size", "64"], "--input-size", "input_size", 64),
    ("benchmark_pretrain_step", ["--warmup", "0"], "--warmup", "warmup", 0),
    ("benchmark_pretrain_step", ["--repeats", "2"], "--repeats", "repeats", 2),
    ("benchmark_pretrain_step", ["--channels-last"], "--channels-last", "channels_last", True),
    ("benchmark_pretrain_step", ["--optimizer", "fused"], "--optimizer", "optimizer", "fused"),
    ("benchmark_pretrain_step", ["--dtypes", "bf16"], "--dtypes", "dtypes", "bf16"),
    ("benchmark_pretrain_step", ["--levels", "1"], "--levels", "levels", 1),
    ("benchmark_pretrain_step", ["--memory-limit-gb", "18"], "--memory-limit-gb", "memory_limit_gb", 18.0),
    ("benchmark_pretrain_step", ["--chunks", "0,4"], "--chunks", "chunks", "0,4"),
    ("benchmark_pretrain_step", ["--peak-tflops", "989"], "--peak-tflops", "peak_tflops", 989.0),
    ("benchmark_pretrain_step", ["--json", "rows.json"], "--json", "json", Path("rows.json")),
    ("benchmark_finetune", ["--size", "tiny"], "--size", "size", "tiny"),
    ("benchmark_finetune", ["--patch", "64"], "--patch", "patch", 64),
    ("benchmark_finetune", ["--predict_shape", "1", "2", "3"], "--predict_shape", "predict_shape", [1, 2, 3]),
    ("benchmark_finetune", ["--warmup", "0"], "--warmup", "warmup", 0),
    ("benchmark_finetune", ["--repeats", "2"], "--repeats", "repeats", 2),
    ("benchmark_finetune", ["--device", "cpu"], "--device", "device", "cpu"),
    ("benchmark_loader", ["--volumes", "3"], "--volumes", "volumes", 3),
    ("benchmark_loader", ["--shape", "64", "96", "96"], "--shape", "shape", [64, 96, 96]),
    ("benchmark_loader", ["--crops", "5"], "--crops", "crops", 5),
]


SCRIPTS = ("reproduce_paper", "label_efficiency", "benchmark_pretrain_step", "benchmark_finetune", "benchmark_loader")


@functools.lru_cache(maxsize=1)
def parsers():
    """Every command's parser, by the name users call it."""
    return {"mim_pretrain": pretrain.build_parser(), "mim_plan_and_preprocess": plan.build_parser(),
            "mim_evaluate": evaluate.build_parser(), "mim_nnunet": main.build_parser(),
            **{name: load_script(name).build_parser() for name in SCRIPTS}}


def test_the_table_covers_every_deprecated_spelling():
    listed = {(command, key) for command, _, key, _, _ in OLD_SPELLINGS}
    registered = {(command, key) for command, parser in parsers().items() for key in deprecated_spellings(parser)}
    assert registered == listed


@pytest.mark.parametrize("command,argv,key,dest,value", OLD_SPELLINGS,
                         ids=[f"{c} {k}" for c, _, k, _, _ in OLD_SPELLINGS])
def test_each_old_spelling_still_parses_with_its_note(command, argv, key, dest, value, capsys):
    parser = parsers()[command]
    new = deprecated_spellings(parser)[key]
    args = parser.parse_args(argv)
    assert getattr(args, dest) == value
    prog = f"{parser.prog} {argv[0]}" if " " in key else parser.prog
    assert capsys.readouterr().err.splitlines() == [deprecation_note(prog, key.split(" ")[-1], new)]


def test_gpus_stays_a_silent_alias_of_num_gpus(capsys):
    parser = pretrain.build_parser()
    assert parser.parse_args(["-d", "1k", "-gpus", "4"]).num_gpus == 4
    assert parser.parse_args(["-d", "1k", "-num_gpus", "2"]).num_gpus == 2
    assert capsys.readouterr().err == ""


def test_flags_follow_nnunets_convention():
    """One dash for a value, two for a switch, no hyphen inside a name (new spellings only)."""
    def walk(parser):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    yield from walk(sub)
            for flag in action.option_strings:
                if flag in ("-h", "--help"):
                    continue
                yield parser.prog, flag, action.nargs == 0
    bad = [(prog, flag) for name, parser in parsers().items() for prog, flag, switch in walk(parser)
           if ("-" in flag.lstrip("-")) or (flag.startswith("--") != switch)]
    assert bad == []
