"""Trainer discovery through nnUNet_extTrainer and one-line errors for a missing environment."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

from helpers.commands import REPO, command
from mim_nnunet.common.environment import trainers_dir

REPO_TRAINERS = REPO / "trainers"


def run(cmd, env):
    return subprocess.run(cmd, env=env, capture_output=True, encoding="utf-8", errors="replace", timeout=120)


def test_trainers_path_prints_the_installed_folder(clean_env):
    result = run([command("mim_nnunet"), "trainers-path"], clean_env)
    assert result.returncode == 0, result.stderr
    folder = Path(result.stdout.strip())
    assert folder == trainers_dir()
    assert folder in (Path(sys.prefix).resolve() / "share" / "mim_nnunet" / "trainers", REPO_TRAINERS)
    assert not (folder / "__init__.py").exists()   # never importable as a package
    # the installed copy is the checkout's: every module identical
    for module in REPO_TRAINERS.glob("*.py"):
        assert (folder / module.name).read_text(encoding="utf-8") == module.read_text(encoding="utf-8"), module.name


def test_each_trainer_class_is_defined_exactly_once():
    defined = {}
    for module in sorted(REPO_TRAINERS.glob("*.py")):
        tree = ast.parse(module.read_text(encoding="utf-8"))
        for node in tree.body:
            if isinstance(node, ast.ClassDef):
                assert node.name not in defined, f"{node.name} defined in {defined.get(node.name)} and {module}"
                defined[node.name] = module.name
            # a bare-name import of a sibling module would load a second copy of its classes
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                assert not any((REPO_TRAINERS / f"{n.split('.')[0]}.py").exists() for n in names), module
    assert {"nnUNetTrainerSwinUNETR", "nnUNetTrainerSwinUNETR_fs12_1epoch"} <= set(defined)


def test_stock_nnunet_finds_our_trainers(monkeypatch):
    monkeypatch.setenv("nnUNet_extTrainer", str(trainers_dir()))
    for name in ("nnUNetTrainerSwinUNETR", "nnUNetTrainerSwinUNETR_fs12_1epoch"):
        cls = recursive_find_trainer_class_by_name(name)
        assert cls.__name__ == name and issubclass(cls, nnUNetTrainer)
        assert cls.__module__ == "nnUNetTrainerSwinUNETR"   # imported by bare name from our folder


def _one_line_error(result):
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.parametrize("missing", ["nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"])
def test_check_env_names_the_missing_nnunet_variable(clean_env, tmp_path, missing):
    env = {**clean_env, **{k: str(tmp_path) for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}}
    del env[missing]
    line = _one_line_error(run([command("mim_nnunet"), "check-env"], env))
    assert line.startswith(f"mim_nnunet: error: {missing} is not set: set it to ")


def test_check_env_names_ext_trainer_and_the_folder_to_use(clean_env, tmp_path):
    env = {**clean_env, **{k: str(tmp_path) for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}}
    line = _one_line_error(run([command("mim_nnunet"), "check-env"], env))
    assert "nnUNet_extTrainer is not set" in line and str(trainers_dir()) in line
    env["nnUNet_extTrainer"] = str(tmp_path)
    line = _one_line_error(run([command("mim_nnunet"), "check-env"], env))
    assert "does not list the mim-nnunet trainers folder" in line
    env["nnUNet_extTrainer"] = f"{tmp_path}:{trainers_dir()}"
    result = run([command("mim_nnunet"), "check-env"], env)
    assert result.returncode == 0 and "environment OK" in result.stdout


def test_env_export_line_sets_ext_trainer_once(clean_env):
    script = 'eval "$(mim_nnunet env)"; eval "$(mim_nnunet env)"; printf %s "$nnUNet_extTrainer"'
    result = subprocess.run(["bash", "-c", script], env={**clean_env, "nnUNet_extTrainer": "/elsewhere"},
                            capture_output=True, encoding="utf-8", errors="replace", timeout=120)
    assert result.stdout == f"{trainers_dir()}:/elsewhere"


def test_mim_pretrain_names_the_missing_variable(clean_env):
    line = _one_line_error(run([command("mim_pretrain"), "-d", "1k"], clean_env))
    assert line.startswith("mim_pretrain: error: nnUNet_preprocessed is not set")
