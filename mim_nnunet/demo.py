"""The built-in demo: generated dataset -> stock nnU-Net plan, train, predict, evaluate.

Every step is a real nnU-Net command run in a subprocess, exactly as a user would type it. Steps whose
output already exists are skipped, so an interrupted demo resumes where it stopped.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import time
from pathlib import Path
from typing import Dict, List

from .environment import trainers_dir
from .errors import DemoError
from .synthetic import LABELS, write_dataset

DEMO_DATASET_ID = 990
DEMO_DATASET_NAME = "MiMSynthetic"
CONFIGURATION = "3d_fullres"
FOLD = "0"


def _run_step(index: int, total: int, title: str, cmd: List[str], env: Dict[str, str]) -> None:
    print(f"\n[{index}/{total}] {title}\n$ {shlex.join(cmd)}", flush=True)
    start = time.time()
    result = subprocess.run(cmd, env=env)
    if result.returncode != 0:
        raise DemoError(f"step '{title}' failed with exit code {result.returncode}: {shlex.join(cmd)}")
    print(f"[{index}/{total}] done in {time.time() - start:.0f} s", flush=True)


def demo_environment(workspace: Path) -> Dict[str, str]:
    """The process environment for the demo: its own nnU-Net folders, our trainers discoverable."""
    env = dict(os.environ)
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        env[name] = str(workspace / name)
        (workspace / name).mkdir(parents=True, exist_ok=True)
    # nnU-Net's default worker count is tuned for its cluster; on a laptop use the cores there are.
    env.setdefault("nnUNet_n_proc_DA", str(min(os.cpu_count() or 1, 8)))
    ext = [p for p in env.get("nnUNet_extTrainer", "").split(os.pathsep) if p.strip()]
    env["nnUNet_extTrainer"] = os.pathsep.join([str(trainers_dir())] + ext)
    return env


def run_demo(workspace: str = "demo_workspace", device: str = "auto",
             trainer: str = "nnUNetTrainerSwinUNETR_fs12_10epochs") -> int:
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    ws = Path(workspace).resolve()
    env = demo_environment(ws)
    raw = Path(env["nnUNet_raw"])
    dataset = f"Dataset{DEMO_DATASET_ID:03d}_{DEMO_DATASET_NAME}"
    model_dir = Path(env["nnUNet_results"]) / dataset / f"{trainer}__nnUNetPlans__{CONFIGURATION}"
    pred_dir = ws / "predictions" / trainer
    total = 5
    started = time.time()
    print(f"mim_nnunet demo: workspace {ws}, device {device}, trainer {trainer}")

    print(f"\n[1/{total}] generate {dataset} (64^3 volumes: sphere = 1, cube = 2)")
    if not (raw / dataset / "dataset.json").is_file():
        write_dataset(raw, DEMO_DATASET_ID, DEMO_DATASET_NAME)
    else:
        print("already there, kept")

    if not (Path(env["nnUNet_preprocessed"]) / dataset / "nnUNetPlans.json").is_file():
        _run_step(2, total, "plan and preprocess (stock nnU-Net)",
                  ["nnUNetv2_plan_and_preprocess", "-d", str(DEMO_DATASET_ID), "-c", CONFIGURATION,
                   "-np", "2", "--verify_dataset_integrity"], env)
    else:
        print(f"\n[2/{total}] plans and preprocessed data already there, kept")

    if not (model_dir / f"fold_{FOLD}" / "checkpoint_final.pth").is_file():
        resume = ["--c"] if (model_dir / f"fold_{FOLD}" / "checkpoint_latest.pth").is_file() else []
        _run_step(3, total, f"train {trainer} (stock nnUNetv2_train)",
                  ["nnUNetv2_train", str(DEMO_DATASET_ID), CONFIGURATION, FOLD, "-tr", trainer,
                   "-device", device] + resume, env)
    else:
        print(f"\n[3/{total}] {model_dir}/fold_{FOLD}/checkpoint_final.pth already there, kept")

    _run_step(4, total, "predict the held-out cases (stock nnUNetv2_predict)",
              ["nnUNetv2_predict", "-i", str(raw / dataset / "imagesTs"), "-o", str(pred_dir),
               "-d", str(DEMO_DATASET_ID), "-c", CONFIGURATION, "-f", FOLD, "-tr", trainer,
               "--disable_tta", "-device", device, "-npp", "1", "-nps", "1"], env)

    summary = pred_dir / "summary.json"
    labels = [str(v) for v in LABELS.values() if v != 0]
    _run_step(5, total, "evaluate (stock nnUNetv2_evaluate_simple)",
              ["nnUNetv2_evaluate_simple", str(raw / dataset / "labelsTs"), str(pred_dir), "-l", *labels,
               "-o", str(summary), "-np", "1"], env)

    result = json.loads(summary.read_text(encoding="utf-8"))
    names = {str(v): k for k, v in LABELS.items()}
    print(f"\nDemo finished in {time.time() - started:.0f} s. Dice on the held-out cases:")
    for label in labels:
        print(f"  {names[label]:<8} {result['mean'][label]['Dice']:.3f}")
    print(f"  mean     {result['foreground_mean']['Dice']:.3f}")
    print(f"Model: {model_dir}\nPredictions: {pred_dir}\nTraining curves: {model_dir}/fold_{FOLD}/progress.png")
    return 0


