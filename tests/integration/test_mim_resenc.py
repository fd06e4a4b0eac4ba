"""MiM for nnU-Net's own ResEnc U-Net (nnU-Net's commands and mim_pretrain in subprocesses; our conversions and
transfer check, run as subprocesses elsewhere, in this process): mim_pretrain -backbone resenc (tiny) -> export-nnssl
(nnssl's checkpoint format) -> import-nnssl back into an export -> stock nnUNetv2_plan_and_preprocess with a
ResEnc planner -> check-transfer -> nnUNetv2_train with the MiM ResEnc trainer from the imported export
(every loaded encoder tensor = the pre-training's) -> pre-training files deleted -> nnUNet's --val and
nnUNetv2_predict."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from helpers.commands import command, nnunet_env, run, run_main
from helpers.exports import raw_sha1
from helpers.synthetic import LABELS, write_dataset
from mim_nnunet.cli.main import main
from mim_nnunet.weights.export import load_export

DATASET = 906
TRAINER = "nnUNetTrainerMiMResEnc_tiny_1epoch"
PLANS = "nnUNetResEncUNetMPlans"
pytestmark = pytest.mark.slow


def test_resenc_pretrain_stock_resenc_plans_train_and_predict_without_the_export(tmp_path, monkeypatch, capsys):
    env = nnunet_env(tmp_path)
    root = write_dataset(tmp_path / "nnUNet_raw", DATASET, num_train=5, num_test=1, shape=(64, 64, 64), seed=3)
    # resenc needs two voxels at its stride-32 stage: S = 64 x 32 x 32 is its smallest input
    run([command("mim_pretrain"), "-d", DATASET, "-data_name", "pre",
         "-backbone", "resenc", "-size", "tiny", "-np", "1",
         "-input_size", "64", "32", "32", "-batch", "1", "-accum", "1", "-steps", "2", "-workers", "0",
         "-val_crops", "1"], env, tmp_path)
    pretrained = Path(env["nnUNet_results"]) / "MiM_pre" / "resenc_tiny" / "export" / "mim_resenc_tiny.safetensors"
    # through nnssl's format and back: the trainer fine-tunes the imported export (released nnU-Net 2.8)
    # our commands in this process (each also runs as a subprocess in tests/weights and tests/integration)
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_extTrainer"):
        monkeypatch.setenv(name, env[name])
    assert run_main(main, ["export-nnssl", pretrained, "-o", tmp_path / "nnssl"], capsys).returncode == 0
    export = tmp_path / "imported" / "from_nnssl.safetensors"
    assert run_main(main, ["import-nnssl", tmp_path / "nnssl" / "checkpoint_final.pth", "-o", export],
                    capsys).returncode == 0
    assert (tmp_path / "imported" / "from_nnssl.card.md").is_file()
    env = {**env, "MIM_PRETRAINED_WEIGHTS": str(export)}
    run([command("nnUNetv2_plan_and_preprocess"), "-d", DATASET, "-c", "3d_fullres", "-pl", "nnUNetPlannerResEncM",
         "-np", "1", "-npfp", "1"], env, tmp_path)

    check = run_main(main, ["check-transfer", "-d", DATASET, "-tr", TRAINER, "-p", PLANS, export], capsys)
    assert check.returncode == 0, check.stderr
    assert "100.00% of" in check.stdout and "transfer check passed" in check.stdout

    run([command("nnUNetv2_train"), DATASET, "3d_fullres", "0", "-tr", TRAINER, "-p", PLANS, "-device", "cpu"],
        env, tmp_path)
    folder = Path(env["nnUNet_results"]) / root.name / f"{TRAINER}__{PLANS}__3d_fullres"
    report = json.loads((folder / "fold_0" / "mim_transfer.json").read_text(encoding="utf-8"))
    assert "$MIM_PRETRAINED_WEIGHTS" in report["how"] and report["encoder_fraction"] == 1.0
    state, record = load_export(pretrained)                # the pre-training's own tensors, not the import's
    assert len(report["digests"]) == len(state) > 50       # every export tensor, each once
    for key, digest in report["digests"].items():          # the encoder at the start of fine-tuning = the export
        assert digest == raw_sha1(state[key[len("encoder."):]]), key
    # the model folder's plans are stock ResEnc plans with the pre-trained encoder, the changes recorded
    config = json.loads((folder / "plans.json").read_text(encoding="utf-8"))["configurations"]["3d_fullres"]
    assert config["architecture"]["arch_kwargs"]["features_per_stage"] == \
        record["architecture"]["arch_kwargs"]["features_per_stage"]
    log = "".join(p.read_text(encoding="utf-8") for p in (folder / "fold_0").glob("training_log_*.txt"))
    assert "n_stages: plans 5 -> pre-trained 6" in log and (folder / "fold_0" / "checkpoint_final.pth").is_file()

    for pre in (Path(env["nnUNet_results"]) / "MiM_pre", Path(env["nnUNet_preprocessed"]) / "MiM_pre",
                tmp_path / "nnssl", tmp_path / "imported"):
        shutil.rmtree(pre)
    env.pop("MIM_PRETRAINED_WEIGHTS")
    # nnU-Net's validation of the trained fold, the export gone: the network comes from the model folder's plans
    run([command("nnUNetv2_train"), DATASET, "3d_fullres", "0", "-tr", TRAINER, "-p", PLANS, "-device", "cpu", "--val"],
        env, tmp_path)
    log = "".join(p.read_text(encoding="utf-8") for p in (folder / "fold_0").glob("training_log_*.txt"))
    assert f"MiM: network architecture from the model folder's {folder / 'plans.json'}" in log
    assert (folder / "fold_0" / "validation" / "summary.json").is_file()
    out = tmp_path / "pred"
    run([command("nnUNetv2_predict"), "-i", root / "imagesTs", "-o", out, "-d", DATASET, "-c", "3d_fullres", "-f",
         "0", "-tr", TRAINER, "-p", PLANS, "--disable_tta", "-device", "cpu", "-npp", "0", "-nps", "0"], env, tmp_path)
    preds = sorted(out.glob("*.nii.gz"))
    assert len(preds) == 1
    assert set(np.unique(sitk.GetArrayFromImage(sitk.ReadImage(str(preds[0]))))) <= set(LABELS.values())
