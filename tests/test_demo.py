"""The README's first command, minus the install: `mim_nnunet demo` at its fastest setting."""

import json
import math
import subprocess

import pytest

from conftest import command

pytestmark = pytest.mark.slow
TRAINER = "nnUNetTrainerSwinUNETR_fs12_1epoch"


def demo(workspace, env):
    result = subprocess.run([command("mim_nnunet"), "demo", "--workspace", str(workspace), "--device", "cpu",
                             "--trainer", TRAINER], env=env, capture_output=True, encoding="utf-8", errors="replace", timeout=1800)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return result.stdout


def test_demo_runs_the_pipeline_and_resumes(tmp_path, clean_env):
    env = {**clean_env, "nnUNet_n_proc_DA": "2"}
    out = demo(tmp_path / "ws", env)
    summary = json.loads((tmp_path / "ws" / "predictions" / TRAINER / "summary.json").read_text())
    assert set(summary["mean"]) == {"1", "2"}
    for label in ("1", "2"):
        assert 0.0 <= summary["mean"][label]["Dice"] <= 1.0 or math.isnan(summary["mean"][label]["Dice"])
    assert f"sphere   {summary['mean']['1']['Dice']:.3f}" in out      # what the user is shown
    assert len(summary["metric_per_case"]) == 2                        # both held-out cases evaluated
    # a second run keeps what exists and only predicts and evaluates again
    again = demo(tmp_path / "ws", env)
    assert "plans and preprocessed data already there, kept" in again
    assert "checkpoint_final.pth already there, kept" in again
