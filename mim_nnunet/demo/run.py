"""The demo on real CT: pre-train MiM briefly, fine-tune MiM-initialised and from-scratch networks on
the same budget with stock nnU-Net, predict held-out cases, evaluate, and write a report folder.

Every step is the command a user would type, run in a subprocess; steps whose output exists are
skipped, so an interrupted demo resumes where it stopped. Data: :mod:`mim_nnunet.demo.data`.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import time
from pathlib import Path
from typing import Dict, List

from ..common.environment import trainers_dir
from ..common.errors import MimError
from ..common.layout import CHECKPOINT, export_path, run_folder
from ..data.sources import DATA_ROOT_ENV
from .settings import DEMO_SETTINGS

CONFIGURATION = "3d_fullres"
FOLD = "all"          # two training cases: fewer than nnU-Net's 5 folds (plans/demo/demo_ct.json)
REPORT = "report"
COLLECTION = "demo"
BACKBONE, SIZE = "hybrid", "tiny"


class DemoError(MimError):
    """A step of the demo failed."""


def _run_step(title: str, cmd: List[str], env: Dict[str, str]) -> float:
    print(f"\n== {title}\n$ {shlex.join(cmd)}", flush=True)
    start = time.time()
    result = subprocess.run(cmd, env=env)
    if result.returncode != 0:
        raise DemoError(f"step '{title}' failed with exit code {result.returncode}: {shlex.join(cmd)}")
    seconds = time.time() - start
    print(f"== done in {seconds:.0f} s", flush=True)
    return seconds


def demo_environment(workspace: Path) -> Dict[str, str]:
    """The process environment for the demo: its own nnU-Net folders and data root, our trainers found."""
    env = {k: v for k, v in os.environ.items() if k != "MIM_PRETRAINED_WEIGHTS"}
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        env[name] = str(workspace / name)
        (workspace / name).mkdir(parents=True, exist_ok=True)
    env[DATA_ROOT_ENV] = str(workspace / "data")
    # nnU-Net's default worker count is tuned for its cluster; on a laptop use the cores there are.
    env.setdefault("nnUNet_n_proc_DA", str(min(os.cpu_count() or 1, 8)))
    ext = [p for p in env.get("nnUNet_extTrainer", "").split(os.pathsep) if p.strip()]
    env["nnUNet_extTrainer"] = os.pathsep.join([str(trainers_dir())] + ext)
    return env


def run_demo(workspace: str = "demo_workspace", device: str = "auto", setting: str = "default") -> int:
    import torch

    from .data import demo_spec, prepare_demo_data

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    conf = DEMO_SETTINGS[setting]
    ws = Path(workspace).resolve()
    env = demo_environment(ws)
    spec = demo_spec()
    started, timings = time.time(), {}
    print(f"mim_nnunet demo ({setting}): workspace {ws}, device {device}")

    print("\n== data: TotalSegmentator's reference CT (PyPI source archive) -> collection 'demo' and a dataset")
    data = prepare_demo_data(Path(env["nnUNet_raw"]), Path(env[DATA_ROOT_ENV]))
    dataset_id, dataset = str(spec["dataset_id"]), data["dataset"].name

    run_dir = run_folder(COLLECTION, BACKBONE, SIZE, results=Path(env["nnUNet_results"]))
    export = export_path(run_dir, BACKBONE, SIZE)
    if not export.is_file():
        steps = conf["pretrain_steps"]
        cmd = ["mim_pretrain", "-d", COLLECTION, "-o", COLLECTION, "-backbone", BACKBONE, "-size", SIZE, "-np", "2",
               "-device", device,
               "-input_size", str(conf["input_size"]), "-batch", "1", "-accum", "1", "-steps", str(steps),
               "-workers", "1", "-recon_every", str(max(1, steps // 2)), "-plot_every", str(max(1, steps // 10)),
               "-save_every", str(max(1, steps // 4))]
        if (run_dir / CHECKPOINT).is_file():
            cmd.append("--c")
        timings["pretrain"] = _run_step("pre-train MiM (hybrid tiny) on the demo collection", cmd, env)
    else:
        print(f"\n== pre-training: {export} already there, kept")

    if not (Path(env["nnUNet_preprocessed"]) / dataset / "nnUNetPlans.json").is_file():
        timings["plan"] = _run_step("plan and preprocess (stock nnU-Net)",
                                    ["nnUNetv2_plan_and_preprocess", "-d", dataset_id, "-c", CONFIGURATION,
                                     "-np", "2"], env)

    results = {}
    for kind, prefix in (("MiM", "nnUNetTrainerMiM"), ("scratch", "nnUNetTrainerMiMScratch")):
        trainer = f"{prefix}_{conf['finetune']}"
        model = Path(env["nnUNet_results"]) / dataset / f"{trainer}__nnUNetPlans__{CONFIGURATION}"
        if not (model / f"fold_{FOLD}" / "checkpoint_final.pth").is_file():
            resume = ["--c"] if (model / f"fold_{FOLD}" / "checkpoint_latest.pth").is_file() else []
            step_env = dict(env, MIM_PRETRAINED_WEIGHTS=str(export)) if kind == "MiM" else env
            timings[f"finetune_{kind}"] = _run_step(
                f"fine-tune {trainer} (stock nnUNetv2_train, fold {FOLD})",
                ["nnUNetv2_train", dataset_id, CONFIGURATION, FOLD, "-tr", trainer, "-device", device] + resume,
                step_env)
        pred = ws / "predictions" / trainer
        timings[f"predict_{kind}"] = _run_step(
            f"predict the held-out halves with {trainer} (stock nnUNetv2_predict)",
            ["nnUNetv2_predict", "-i", str(data["dataset"] / "imagesTs"), "-o", str(pred), "-d", dataset_id,
             "-c", CONFIGURATION, "-f", FOLD, "-tr", trainer, "--disable_tta", "-device", device,
             "-npp", "1", "-nps", "1"], env)
        results[kind] = {"trainer": trainer, "model": model, "predictions": pred}

    from .report import write_report
    report = write_report(ws / REPORT, data["dataset"], results, run_dir, spec, setting, timings,
                          time.time() - started)
    print(f"\nDemo finished in {time.time() - started:.0f} s. Report: {report}")
    print((ws / REPORT / "summary.md").read_text(encoding="utf-8").split("## Scores", 1)[-1].split("##", 1)[0])
    return 0

