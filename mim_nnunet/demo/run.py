"""The demo on real CT: pre-train MiM briefly, fine-tune MiM-initialised and from-scratch networks on
the same budget with stock nnU-Net (several seeds; both labelled cases, and one), predict the held-out
halves, evaluate, and write a report folder.

Every step is the command a user would type, run in a subprocess; steps whose output exists are
skipped, so an interrupted demo resumes where it stopped. Data: :mod:`mim_nnunet.demo.data`; the
dataset's data settings (spacing, HU window, patch): ``plans/demo/demo_ct.json``; the budgets: :mod:`.settings`.

Fine-tuning is reproducible: each run is seeded (``MIM_SEED``) and nnU-Net's augmentation runs in the
trainer's process (``nnUNet_n_proc_DA=0``), so a rerun gives the same weights and scores.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import threading
import time
from pathlib import Path
from typing import Dict, List, Tuple

from ..common.atomic import write_json_atomic
from ..common.environment import trainers_dir
from ..common.errors import MimError
from ..common.host import THREADS_ENV, usable_cores
from ..common.layout import CHECKPOINT, export_path, run_folder
from ..data.sources import DATA_ROOT_ENV
from ..finetune.trainer import SEED_ENV
from ..weights.finding import WEIGHTS_ENV
from .settings import DEMO_SETTINGS, describe_estimate, estimate_demo

CONFIGURATION = "3d_fullres"
PLANS = "nnUNetPlansMiMDemo"       # the demo's plans variant (spacing, HU window, patch)
REPORT = "report"
COLLECTION = "demo"
BACKBONE, SIZE = "hybrid", "tiny"
KINDS = {"MiM": "nnUNetTrainerMiM", "scratch": "nnUNetTrainerMiMScratch"}
# label settings: which nnU-Net fold trains on what (fold 0 of the splits the demo writes: one case)
FOLDS = {"all": "all", "one": "0"}
NNUNET_POOL_ENV = "nnUNet_def_n_proc"      # nnU-Net's process count for its pools (nnunetv2/configuration.py)


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


def trainings_at_once(device: str) -> int:
    """Fine-tunings run together: two on a CPU with at least two cores (the demo's tiny network scales poorly
    from one thread to two: 1.3 vs 0.8 s per iteration on 2 cores, so two runs of one thread each do 23 % more
    iterations per second than one of two; measured before the depthwise conv ran channels-last on the CPU),
    one on a GPU."""
    return 2 if device == "cpu" and usable_cores() >= 2 else 1


def _run_together(steps: List[Tuple[str, str, List[str], Dict[str, str]]], parallel: int) -> Dict[str, float]:
    """Run ``(key, title, cmd, env)`` steps, ``parallel`` at a time, each with an equal share of the CPU threads
    (``$MIM_CPU_THREADS``); their output is passed on line by line, prefixed with the step's number. Returns
    the seconds each took, by key (``"<key> (in parallel)"`` for steps that ran together: their times overlap)."""
    if parallel <= 1 or len(steps) <= 1:
        return {key: _run_step(title, cmd, env) for key, title, cmd, env in steps}
    seconds: Dict[str, float] = {}
    for start in range(0, len(steps), parallel):
        group = steps[start: start + parallel]
        threads = str(max(1, usable_cores() // len(group)))
        running = []
        for n, (key, title, cmd, env) in enumerate(group, start=1):
            print(f"\n== [{n}] {title}\n$ {THREADS_ENV}={threads} {shlex.join(cmd)}", flush=True)
            # unbuffered: the child's lines arrive as it prints them, not in blocks at its end
            proc = subprocess.Popen(cmd, env=dict(env, PYTHONUNBUFFERED="1", **{THREADS_ENV: threads}),
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, encoding="utf-8",
                                    errors="replace")
            pump = threading.Thread(target=_prefix_lines, args=(proc.stdout, f"[{n}] "), daemon=True)
            pump.start()
            running.append((key, title, cmd, proc, pump, time.time()))
        failed = []
        for key, title, cmd, proc, pump, began in running:
            code = proc.wait()
            pump.join()
            seconds[f"{key} (in parallel)"] = took = time.time() - began
            print(f"== {title}: done in {took:.0f} s" if code == 0 else
                  f"== {title}: failed with exit code {code}", flush=True)
            if code != 0:
                failed.append(f"step '{title}' failed with exit code {code}: {shlex.join(cmd)}")
        if failed:
            raise DemoError("; ".join(failed))
    return seconds


def _prefix_lines(stream, prefix: str) -> None:
    for line in stream:
        print(prefix + line, end="", flush=True)


def demo_environment(workspace: Path) -> Dict[str, str]:
    """The process environment for the demo: its own nnU-Net folders and data root, our trainers found."""
    env = {k: v for k, v in os.environ.items() if k not in (WEIGHTS_ENV, SEED_ENV, THREADS_ENV)}
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        env[name] = str(workspace / name)
        (workspace / name).mkdir(parents=True, exist_ok=True)
    env[DATA_ROOT_ENV] = str(workspace / "data")
    ext = [p for p in env.get("nnUNet_extTrainer", "").split(os.pathsep) if p.strip()]
    env["nnUNet_extTrainer"] = os.pathsep.join([str(trainers_dir())] + ext)
    # nnU-Net's pools (final validation's export, metrics) default to 8 processes, each a fresh interpreter
    # importing torch: on a small CPU that start-up costs more than the demo's two cases; a user's value stays
    env.setdefault(NNUNET_POOL_ENV, str(min(8, usable_cores())))
    return env


def write_one_case_split(preprocessed: Path, cases: List[str], spec: Dict) -> Path:
    """``splits_final.json`` whose fold 0 trains on the demo's one labelled case and validates on the
    other (nnU-Net needs a validation case; the held-out halves are never in it)."""
    one = spec["one_labelled_case"]
    if one not in cases:
        raise DemoError(f"the demo's one_labelled_case {one!r} is not among the training cases {cases}")
    path = preprocessed / "splits_final.json"
    write_json_atomic(path, [{"train": [one], "val": sorted(c for c in cases if c != one)}])
    return path


SETTING_FILE = "setting.json"      # which setting a workspace's runs belong to


def claim_workspace(ws: Path, setting: str) -> Path:
    """Record ``setting`` in the workspace ``ws``, or refuse a workspace whose runs belong to another setting:
    the demo skips every step whose output exists, so it would reuse, say, a quick setting's 4-step export."""
    marker = ws / SETTING_FILE
    if marker.is_file():
        try:
            held = json.loads(marker.read_text(encoding="utf-8"))["setting"]
        except (ValueError, KeyError, TypeError):
            raise DemoError(f"{marker}: unreadable; delete it if the workspace holds the '{setting}' setting's runs")
        if held != setting:
            raise DemoError(f"{ws}: holds the demo's '{held}' setting, whose finished steps would be reused; "
                            f"use another -workspace for '{setting}', or delete {ws}")
    else:
        ws.mkdir(parents=True, exist_ok=True)
        write_json_atomic(marker, {"setting": setting})
    return marker


def run_demo(workspace: str = "demo_workspace", device: str = "auto", setting: str = "default") -> int:
    import torch

    from .data import demo_spec, prepare_demo_data

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    conf = DEMO_SETTINGS[setting]
    pre, fine = conf["pretrain"], conf["finetune"]
    ws = Path(workspace).resolve()
    claim_workspace(ws, setting)
    env = demo_environment(ws)
    spec = demo_spec()
    recipe = spec["recipe"]
    started, timings = time.time(), {}
    print(f"mim_nnunet demo ({setting}): workspace {ws}, device {device}")
    from ..common.host import probe_host
    host = probe_host()            # at this process's threads: the demo's steps use as many
    print(host.line())
    if device == "cpu":
        estimate = estimate_demo(setting, host.matmul_gflops, host.cpu_capability, trainings_at_once(device))
        for line in describe_estimate(setting, estimate):
            print(line, flush=True)
    else:
        estimate = []
        print("estimate: none on a GPU (the demo's cost model is calibrated on CPUs)")

    print("\n== data: TotalSegmentator's reference CT (PyPI source archive) -> collection 'demo' and a dataset")
    data = prepare_demo_data(Path(env["nnUNet_raw"]), Path(env[DATA_ROOT_ENV]))
    dataset_id, dataset = str(spec["dataset_id"]), data["dataset"].name
    spacing = [str(s) for s in recipe["spacing_xyz"]]
    window = [str(w) for w in recipe["window"]]     # pre-training and fine-tuning see the same intensities

    run_dir = run_folder(COLLECTION, BACKBONE, SIZE, results=Path(env["nnUNet_results"]))
    export = export_path(run_dir, BACKBONE, SIZE)
    if not export.is_file():
        steps = pre["steps"]
        # -np 1: three volumes are prepared faster in the process than by a pool of fresh interpreters
        cmd = ["mim_pretrain", "-d", COLLECTION, "-data_name", COLLECTION,
               "-backbone", BACKBONE, "-size", SIZE, "-np", "1",
               "-device", device, "-spacing", *spacing, "-ct_window", *window, "-input_size", str(pre["input_size"]),
               "-batch", str(pre["batch"]), "-accum", "1", "-steps", str(steps), "-workers", "1",
               "-val_every", str(pre["val_every"]), "-val_crops", str(pre["val_crops"]),
               "-recon_every", str(max(1, steps // 2)), "-plot_every", str(max(1, steps // 10)),
               "-save_every", str(max(1, steps // 4))] + (["-lr", str(pre["lr"])] if pre["lr"] else [])
        if (run_dir / CHECKPOINT).is_file():
            cmd.append("--c")
        timings["pre-training"] = _run_step("pre-train MiM (hybrid tiny) on the demo collection", cmd, env)
    else:
        print(f"\n== pre-training: {export} already there, kept")

    preprocessed = Path(env["nnUNet_preprocessed"]) / dataset
    if not (preprocessed / f"{PLANS}.json").is_file():
        timings["planning"] = _run_step(
            "nnU-Net's fingerprint and plans (stock; no preprocessing with its default plans)",
            ["nnUNetv2_plan_and_preprocess", "-d", dataset_id, "-c", CONFIGURATION, "--no_pp", "-np", "2",
             "-npfp", "2"], env)
        timings["planning"] += _run_step(
            "the demo's plans variant: spacing, the pre-training HU window, patch",
            ["mim_nnunet", "plans-variant", "-d", dataset_id, "-plans_name", PLANS, "-spacing", *spacing,
             "-ct_window", *window, "-patch", *[str(p) for p in recipe["patch_xyz"]]], env)
    if not (preprocessed / f"{PLANS}_{CONFIGURATION}").is_dir():
        timings["preprocessing"] = _run_step(
            "preprocess with the variant (stock nnUNetv2_preprocess)",
            ["nnUNetv2_preprocess", "-d", dataset_id, "-plans_name", PLANS, "-c", CONFIGURATION, "-np", "2"], env)
    if "one" in fine["labels"]:
        cases = sorted(p.name[: -len("_0000.nii.gz")] for p in (data["dataset"] / "imagesTr").glob("*_0000.nii.gz"))
        write_one_case_split(preprocessed, cases, spec)

    held_out = len(list((data["dataset"] / "labelsTs").glob("*.nii.gz")))
    parallel = trainings_at_once(device)
    if parallel > 1:
        print(f"\n== fine-tunings: {parallel} at a time, {usable_cores() // parallel} CPU thread(s) each "
              f"(${THREADS_ENV})")
    results: Dict[str, Dict] = {}
    for label in fine["labels"]:
        fold = FOLDS[label]
        for seed in fine["seeds"]:
            # seeded, with nnU-Net's augmentation in the trainer's process: a rerun repeats exactly
            # (nnU-Net's planner refuses nnUNet_n_proc_DA=0, so only the training steps get it)
            run_env = dict(env, nnUNet_results=str(ws / "finetune" / f"{label}_seed{seed}"), nnUNet_n_proc_DA="0",
                           **{SEED_ENV: str(seed)})
            trainings = []
            for kind, prefix in KINDS.items():
                trainer = f"{prefix}_tiny_{fine['budget']}"
                model = Path(run_env["nnUNet_results"]) / dataset / f"{trainer}__{PLANS}__{CONFIGURATION}"
                tag = f"{kind}, {label} labelled, seed {seed}"
                if not (model / f"fold_{fold}" / "checkpoint_final.pth").is_file():
                    resume = ["--c"] if (model / f"fold_{fold}" / "checkpoint_latest.pth").is_file() else []
                    step_env = dict(run_env, **{WEIGHTS_ENV: str(export)}) if kind == "MiM" else run_env
                    trainings.append((f"fine-tuning {tag}",
                                      f"fine-tune {trainer} ({tag}; stock nnUNetv2_train, fold {fold})",
                                      ["nnUNetv2_train", dataset_id, CONFIGURATION, fold, "-tr", trainer, "-p", PLANS,
                                       "-device", device] + resume, step_env))
                pred = ws / "predictions" / f"{label}_seed{seed}" / kind
                results[f"{label}/{seed}/{kind}"] = {"label": label, "seed": seed, "kind": kind, "trainer": trainer,
                                                     "model": str(model), "fold": fold, "predictions": str(pred)}
            timings.update(_run_together(trainings, parallel))
            predictions = []
            for kind in KINDS:
                run = results[f"{label}/{seed}/{kind}"]
                pred, tag = Path(run["predictions"]), f"{kind}, {label} labelled, seed {seed}"
                if not pred.is_dir() or len(list(pred.glob("*.nii.gz"))) < held_out:
                    predictions.append((f"prediction {tag}",
                                        f"predict the held-out halves ({tag}; stock nnUNetv2_predict)",
                                        ["nnUNetv2_predict", "-i", str(data["dataset"] / "imagesTs"), "-o", str(pred),
                                         "-d", dataset_id, "-c", CONFIGURATION, "-f", fold, "-tr", run["trainer"],
                                         "-p", PLANS, "--disable_tta", "-device", device, "-npp", "0", "-nps", "0"],
                                        run_env))
            # together too: a prediction of the demo's two small halves is mostly nnU-Net's start-up; -npp 0 -nps 0
            # (nnU-Net's sequential prediction) saves the start-ups of its preprocessing and export processes
            timings.update(_run_together(predictions, parallel))

    from .report import write_report
    report = write_report(ws / REPORT, data["dataset"], results, run_dir, spec, setting, timings,
                          time.time() - started, host=host, estimate=estimate)
    print(f"\nDemo finished in {time.time() - started:.0f} s. Report: {report}")
    print((ws / REPORT / "summary.md").read_text(encoding="utf-8").split("## Scores", 1)[-1].split("## Run", 1)[0])
    write_json_atomic(ws / REPORT / "runs.json", results)
    return 0
