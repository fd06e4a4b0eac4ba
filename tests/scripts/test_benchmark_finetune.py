"""scripts/benchmark_finetune.py: MiMUNETR and nnU-Net's default U-Net, one training iteration and one
sliding-window prediction each."""

import json
import math
import subprocess
import sys

from helpers.commands import SCRIPTS


def test_both_networks_train_and_predict_with_nnunets_window_count():
    shape_xyz, patch = (96, 80, 64), 64           # MiMUNETR needs 64: at 32 its bottleneck is one voxel
    result = subprocess.run([sys.executable, str(SCRIPTS / "benchmark_finetune.py"), "-size", "tiny", "-patch",
                             str(patch), "-predict_shape", *map(str, shape_xyz), "-repeats", "1", "-warmup", "0",
                             "-device", "cpu"], capture_output=True, encoding="utf-8", errors="replace", timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [r["network"].split()[0] for r in rows] == ["nnUNetTrainerMiM", "nnUNetTrainer"]
    # each network trains as its trainer does on the CPU: ours channels-last, nnU-Net's in NCDHW
    assert [r["train_memory_format"] for r in rows] == ["NDHWC", "NCDHW"]
    # nnU-Net's window placement at step 0.5: ceil((size - patch) / (patch / 2)) + 1 windows per axis
    windows = math.prod(math.ceil((s - patch) / (patch / 2)) + 1 for s in shape_xyz)
    for r in rows:
        assert r["windows"] == windows == 4 and r["train_iteration_seconds"] > 0 and r["predict_seconds"] > 0
    assert "| nnUNetTrainer (3d_fullres PlainConvUNet) |" in result.stdout
