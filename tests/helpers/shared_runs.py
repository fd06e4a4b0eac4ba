"""Real runs that several test modules only read, built once per test run (the session fixtures
``mim_exports``, ``mim_finetuned`` and ``demo_data`` in ``tests/conftest.py`` call these).

Each real nnU-Net or pre-training run costs tens of seconds to minutes on a CPU, so a run the suite needs
in several places happens once: tests read its files and never change them. A test that must change a
model folder or an export (train another fold, corrupt a file) copies what it needs into its own
``tmp_path`` first.

- :func:`build_exports`: Dataset902 (5 training + 2 test cases of 64^3, spheres and cubes, ``labelsTs``
  for scoring), planned and preprocessed by stock ``nnUNetv2_plan_and_preprocess``; ``mim_pretrain``
  (2 steps, S = 32; one validation crop for the hybrid, one sub-volume per level for swin) of the hybrid and the
  swin backbone at size ``tiny`` on it; copies of both exports kept outside ``$nnUNet_results``.
- :func:`build_finetuned`: ``nnUNetv2_train`` fold 0 with ``nnUNetTrainerMiM_tiny_1epoch`` (``--npz``: its
  final validation keeps the probabilities) and ``nnUNetTrainerMiMSwinUNETR_tiny_1epoch``, each finding its
  export the way users' runs do (the newest under ``$nnUNet_results``); then, with every pre-training file moved
  away, ``nnUNetv2_predict`` of the test cases with both; the files are moved back. (nnU-Net's ``--val`` of a
  fold whose export is gone is tests/integration/test_mim_resenc.py's: the same ``PretrainedEncoder`` mixin.)
"""

from __future__ import annotations

import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Dict

from .commands import command, nnunet_env, run
from .synthetic import write_dataset

DATASET = 902
COLLECTION = "pre"                      # mim_pretrain -o: $nnUNet_results/MiM_pre/<backbone>_tiny/
TRAINERS = {"hybrid": "nnUNetTrainerMiM_tiny_1epoch", "swin": "nnUNetTrainerMiMSwinUNETR_tiny_1epoch"}
PLANS = "nnUNetPlans"
CONFIGURATION = "3d_fullres"


def build_exports(work: Path) -> Dict:
    """The planned dataset and both exports; returns ``work``, ``env`` (a user's shell: nnU-Net's folders
    under ``work``, our trainers found), ``root`` (the raw dataset), ``exports`` (backbone -> the kept copy of
    its ``.safetensors``, its ``.json`` record beside it) and ``pretrain_dirs`` (what mim_pretrain wrote)."""
    env = nnunet_env(work)
    root = write_dataset(work / "nnUNet_raw", DATASET, num_train=5, num_test=2, shape=(64, 64, 64), seed=2)
    run([command("nnUNetv2_plan_and_preprocess"), "-d", DATASET, "-c", CONFIGURATION, "-np", "1", "-npfp", "1"],
        env, work)
    exports = {}
    for backbone in TRAINERS:
        # swin at S = 32 pads its 16^3 tokens to 7^3-token windows (21^3): each of a step's 21 sub-volumes costs
        # about half a second, each validation crop as much. Its export's readers need an encoder of the right
        # shapes, not a converged one: one sub-volume per level (-gamma2/-gamma3 1), no validation
        cheaper = [] if backbone == "hybrid" else ["-gamma2", "1", "-gamma3", "1"]
        run([command("mim_pretrain"), "-d", DATASET, "-data_name", COLLECTION, "-backbone", backbone, "-size", "tiny",
             "-np", "1", "-input_size", "32", "-batch", "1", "-accum", "1", "-steps", "2", "-workers", "0",
             "-val_crops", "1" if backbone == "hybrid" else "0", *cheaper], env, work)
        made = Path(env["nnUNet_results"]) / f"MiM_{COLLECTION}" / f"{backbone}_tiny" / "export" / \
            f"mim_{backbone}_tiny.safetensors"
        kept = work / "exports" / made.name
        kept.parent.mkdir(exist_ok=True)
        for suffix in (".safetensors", ".json"):
            shutil.copy(made.with_suffix(suffix), kept.with_suffix(suffix))
        exports[backbone] = kept
    pretrain_dirs = [Path(env[name]) / f"MiM_{COLLECTION}" for name in ("nnUNet_results", "nnUNet_preprocessed")]
    return {"work": work, "env": env, "root": root, "exports": exports, "pretrain_dirs": pretrain_dirs,
            "dataset": DATASET}


@contextmanager
def pretraining_files_moved_away(pretrain_dirs, aside: Path):
    """Every pre-training file out of nnU-Net's folders for the block (prediction must not need them), then
    back (the session's other readers find them where mim_pretrain wrote them)."""
    moved = []
    try:
        for i, folder in enumerate(pretrain_dirs):
            target = aside / str(i)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(folder), str(target))
            moved.append((target, folder))
        yield
    finally:
        for target, folder in moved:
            shutil.move(str(target), str(folder))


def model_folder(env: Dict, root: Path, trainer: str, plans: str = PLANS) -> Path:
    return Path(env["nnUNet_results"]) / root.name / f"{trainer}__{plans}__{CONFIGURATION}"


def build_finetuned(exports: Dict) -> Dict:
    """Both MiM trainers fine-tuned from :func:`build_exports`' exports (the hybrid with ``--npz``) and their
    predictions; returns ``exports``' entries and ``models`` and ``predictions`` (backbone -> folder)."""
    env, work, root = exports["env"], exports["work"], exports["root"]
    models, predictions = {}, {}
    for backbone, trainer in TRAINERS.items():
        npz = ["--npz"] if backbone == "hybrid" else []
        run([command("nnUNetv2_train"), DATASET, CONFIGURATION, "0", "-tr", trainer, "-device", "cpu", *npz], env,
            work)
        models[backbone] = model_folder(env, root, trainer)
    with pretraining_files_moved_away(exports["pretrain_dirs"], work / "pretraining_aside"):
        for backbone, trainer in TRAINERS.items():
            predictions[backbone] = work / f"pred_{trainer}"
            run([command("nnUNetv2_predict"), "-i", root / "imagesTs", "-o", predictions[backbone], "-d", DATASET,
                 "-c", CONFIGURATION, "-f", "0", "-tr", trainer, "--disable_tta", "-device", "cpu", "-npp", "0",
                 "-nps", "0"], env, work)
    return {**exports, "models": models, "predictions": predictions}
