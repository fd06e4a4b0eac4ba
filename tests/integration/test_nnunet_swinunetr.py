"""The user's path with stock nnU-Net commands in subprocesses: plan, train our trainer, predict."""

import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from helpers.commands import command, run
from helpers.synthetic import LABELS, write_dataset
from mim_nnunet.finetune.loading import load_nnunet_checkpoint

DATASET_ID = 901
TRAINER = "nnUNetTrainerSwinUNETR_fs12_1epoch"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pipeline(module_tmp):
    work = module_tmp("nnunet")
    env = {k: v for k, v in os.environ.items() if not k.startswith("nnUNet_")}
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        env[name] = str(work / name)
    # as the README says: the trainers folder comes from our command
    env["nnUNet_extTrainer"] = run([command("mim_nnunet"), "trainers-path"], env, work).stdout.strip()
    env["nnUNet_n_proc_DA"] = "2"
    root = write_dataset(work / "nnUNet_raw", DATASET_ID, num_train=5, num_test=2, shape=(64, 64, 64), seed=1)
    run([command("nnUNetv2_plan_and_preprocess"), "-d", str(DATASET_ID), "-c", "3d_fullres", "-np", "2",
         "--verify_dataset_integrity"], env, work)
    run([command("nnUNetv2_train"), str(DATASET_ID), "3d_fullres", "0", "-tr", TRAINER, "-device", "cpu"], env, work)
    out = work / "predictions"
    run([command("nnUNetv2_predict"), "-i", str(root / "imagesTs"), "-o", str(out), "-d", str(DATASET_ID),
         "-c", "3d_fullres", "-f", "0", "-tr", TRAINER, "--disable_tta", "-device", "cpu",
         "-npp", "1", "-nps", "1"], env, work)
    model = Path(env["nnUNet_results"]) / root.name / f"{TRAINER}__nnUNetPlans__3d_fullres"
    return {"root": root, "out": out, "model": model}


def test_predictions_exist_with_input_geometry_and_valid_labels(pipeline):
    inputs = sorted((pipeline["root"] / "imagesTs").glob("*_0000.nii.gz"))
    assert len(inputs) == 2
    for image_path in inputs:
        pred_path = pipeline["out"] / image_path.name.replace("_0000.nii.gz", ".nii.gz")
        assert pred_path.is_file(), f"no prediction for {image_path.name}"
        image, pred = sitk.ReadImage(str(image_path)), sitk.ReadImage(str(pred_path))
        assert pred.GetSize() == image.GetSize()
        assert np.allclose(pred.GetSpacing(), image.GetSpacing())
        assert np.allclose(pred.GetOrigin(), image.GetOrigin())
        assert np.allclose(pred.GetDirection(), image.GetDirection())
        assert set(np.unique(sitk.GetArrayFromImage(pred))) <= set(LABELS.values())


def test_checkpoint_and_saved_plans_record_our_trainer(pipeline):
    ckpt = load_nnunet_checkpoint(pipeline["model"] / "fold_0" / "checkpoint_final.pth")
    assert ckpt["trainer_name"] == TRAINER
    assert any(k.startswith("swinViT.") for k in ckpt["network_weights"])    # a SwinUNETR was trained
    import json
    plans = json.loads((pipeline["model"] / "plans.json").read_text(encoding="utf-8"))
    config = plans["configurations"]["3d_fullres"]
    assert config["architecture"]["network_class_name"] == "monai.networks.nets.SwinUNETR"
    assert config["architecture"]["arch_kwargs"]["feature_size"] == 12
    assert all(s % 32 == 0 for s in config["patch_size"])
    assert (pipeline["model"] / "fold_0" / "progress.png").is_file()
