"""scripts/gpu_check.py: one JSON summary whatever happens; its checks run on the CPU too (small subsets)."""

import json
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from helpers.commands import SCRIPTS, load_script


def summary(out):
    return json.loads((out / "gpu_check_summary.json").read_text(encoding="utf-8"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: the check would run")
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


def test_planner_memory_scales_measured_peaks_to_96_and_unknown_checks_are_refused(tmp_path):
    module = load_script("gpu_check")
    rows = [{"backbone": "hybrid", "size": "tiny", "dtype": "bf16", "input_size": 48, "peak_memory_mb": 1536.0,
             "peak_memory_kind": "cuda_allocated"}]
    table = module.check_planner_memory(SimpleNamespace(benchmark_rows=rows))["per_crop"]
    assert table["hybrid:tiny:bf16"]["measured_gb_at_96"] == 1.5 * 8          # (96 / 48)^3 voxels
    with pytest.raises(RuntimeError, match="no benchmark rows"):
        module.check_planner_memory(SimpleNamespace(benchmark_rows=[]))
    with pytest.raises(SystemExit):
        module.main(["--out", str(tmp_path), "--checks", "environment,warp_drive"])
