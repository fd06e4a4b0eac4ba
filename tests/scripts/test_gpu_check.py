"""scripts/gpu_check.py: one JSON summary whatever happens; its checks run on the CPU too (small subsets)."""

import json
import subprocess
import sys

import pytest
import torch

from helpers.commands import SCRIPTS, load_script


def summary(out):
    return json.loads((out / "gpu_check_summary.json").read_text(encoding="utf-8"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible: the check would run")
def test_without_a_gpu_every_check_is_reported_skipped(tmp_path):
    result = subprocess.run([sys.executable, str(SCRIPTS / "gpu_check.py"), "--out", str(tmp_path)],
                            capture_output=True, encoding="utf-8", errors="replace", timeout=300)
    assert result.returncode == 2 and "no CUDA device" in result.stdout
    checks = summary(tmp_path)["checks"]
    assert list(checks) == list(load_script("gpu_check").CHECKS)
    assert all(c == {"status": "skipped", "why": "no CUDA device"} for c in checks.values())


def test_precision_steps_run_and_are_summarised_on_the_cpu(tmp_path):
    result = subprocess.run([sys.executable, str(SCRIPTS / "gpu_check.py"), "--out", str(tmp_path), "--device", "cpu",
                             "--checks", "environment,precision_steps", "--backbones", "hybrid", "--precisions",
                             "fp16", "--precision_input_size", "32"],
                            capture_output=True, encoding="utf-8", errors="replace", timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    s = summary(tmp_path)
    assert s["all_ok"] and s["checks"]["environment"]["torch"] == torch.__version__
    step = s["checks"]["precision_steps"]["hybrid:fp16"]
    assert step["grads_finite"] and len(step["losses"]) == 2 and all(0 < v < 100 for v in step["losses"])


def test_benchmark_levers_and_planner_memory_on_the_cpu(tmp_path):
    """The benchmark check's rows (one shot) and a lever's rows, and the planner's model next to each peak."""
    from mim_nnunet.data.planner import step_memory_gb

    result = subprocess.run([sys.executable, str(SCRIPTS / "gpu_check.py"), "--out", str(tmp_path), "--device", "cpu",
                             "--checks", "benchmark,planner_memory", "--benchmark_configs", "hybrid:tiny",
                             "--benchmark_input_size", "32", "--levers", "checkpointing", "--lever_config",
                             "hybrid:tiny", "--lever_dtype", "fp32"],
                            capture_output=True, encoding="utf-8", errors="replace", timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    checks = summary(tmp_path)["checks"]
    (row,) = checks["benchmark"]["rows"]
    assert (row["backbone"], row["chunk"], row["optimizer"]) == ("hybrid", 0, "fused")
    assert row["optimizer_sec_median"] > 0
    (lever,) = checks["benchmark"]["levers"]["checkpointing"]
    assert lever["activation_checkpointing"] and not row["activation_checkpointing"]
    entry = checks["planner_memory"]["per_crop"]["hybrid:tiny:fp32:S32:chunk0"]
    assert entry["modelled_gb"] == round(step_memory_gb("hybrid", "tiny", [32] * 3, 1, 0, fraction=1.0), 2)
    assert entry["measured_gb"] == round(row["peak_memory_mb"] / 1024, 2)


def test_unknown_checks_are_refused(tmp_path):
    module = load_script("gpu_check")
    with pytest.raises(SystemExit):
        module.main(["--out", str(tmp_path), "--checks", "environment,warp_drive"])
