"""Files written by mim-nnunet 0.1.0 (commit ddb190f, before the library was regrouped into packages) still
load: exports (both backbones) and a fine-tuned model folder predicting through stock nnUNetv2_predict.

The old code is a pinned fixture (``tests/fixtures/pre_regroup_ddb190f.tar.gz``, ``git archive`` of that
commit's ``mim_nnunet``, ``trainers`` and ``plans``): it writes the files here, in subprocesses that import
it instead of the installed package, and the installed code reads them.
"""

import os
import tarfile
import textwrap

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from helpers.commands import REPO, command, plan_with_fewer_samples, run
from helpers.exports import raw_sha1
from helpers.synthetic import write_dataset
from mim_nnunet.networks import MiMUNETR
from mim_nnunet.weights.export import load_export
from mim_nnunet.weights.transfer import transfer

# one worker builds the module's 0.1.0 files once (pytest-xdist would build them in each worker running a test)
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("files_from_0_1_0")]
OLD_CODE = REPO / "tests" / "fixtures" / "pre_regroup_ddb190f.tar.gz"
DATASET = 905
TRAINER = "nnUNetTrainerMiM_tiny_1epoch"          # a trainer class name of 0.1.0, kept since


@pytest.fixture(scope="module")
def old(module_tmp):
    """Exports and a fine-tuned MiMUNETR fold written by 0.1.0, and its predictions."""
    work = module_tmp("old")
    code = work / "code"
    with tarfile.open(OLD_CODE) as tar:
        tar.extractall(code, filter="data")
    base = {k: v for k, v in os.environ.items() if not k.startswith(("nnUNet_", "MIM_"))}
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        base[name] = str(work / name)
    base["nnUNet_n_proc_DA"] = base["nnUNet_def_n_proc"] = "1"
    old_env = dict(base, PYTHONPATH=str(code), nnUNet_extTrainer=str(code / "trainers"))
    exports = {"hybrid": work / "exports" / "hybrid.safetensors", "swin": work / "exports" / "swin.safetensors"}
    writer = textwrap.dedent(f"""
        import torch, mim_nnunet
        assert mim_nnunet.__file__.startswith({str(code)!r}), mim_nnunet.__file__   # the old code, not ours
        from mim_nnunet.backbones import build_encoder
        from mim_nnunet.export import export_encoder
        for backbone, path in (("hybrid", {str(exports['hybrid'])!r}), ("swin", {str(exports['swin'])!r})):
            torch.manual_seed(0)
            encoder, _ = build_encoder(backbone, "tiny", 1, (32, 32, 32))
            export_encoder(encoder, backbone, "tiny", path, in_channels=1, input_size=(32, 32, 32),
                           spacing=[1.0, 1.0, 1.0], intensity={{"CT": {{"scheme": "ct_window", "window": [-1000.0, 1000.0]}}}})
    """)
    run(["python", "-c", writer], old_env, work)
    root = write_dataset(work / "nnUNet_raw", DATASET, num_train=3, num_test=1, shape=(48, 48, 48), seed=5)
    # planning is nnU-Net's alone (0.1.0 had no planner): its intensity statistics from fewer voxels
    plan_with_fewer_samples(["-d", DATASET, "-c", "3d_fullres", "-np", "1", "-npfp", "1"], old_env, work)
    run([command("nnUNetv2_train"), DATASET, "3d_fullres", "all", "-tr", TRAINER, "-device", "cpu"],
        dict(old_env, MIM_PRETRAINED_WEIGHTS=str(exports["hybrid"])), work)
    predict = [command("nnUNetv2_predict"), "-i", root / "imagesTs", "-d", DATASET, "-c", "3d_fullres", "-f", "all",
               "-tr", TRAINER, "--disable_tta", "-device", "cpu", "-npp", "0", "-nps", "0"]
    run(predict + ["-o", work / "pred_old"], old_env, work)
    new_env = dict(base, nnUNet_extTrainer=run([command("mim_nnunet"), "trainers-path"], base, work).stdout.strip())
    return {"work": work, "exports": exports, "predict": predict, "new_env": new_env}


def test_exports_of_0_1_0_load_and_transfer_exactly(old):
    hybrid, record = load_export(old["exports"]["hybrid"])
    net = MiMUNETR(1, 2, (32, 32, 32), size="tiny", feature_size=12)
    report = transfer(net, hybrid, record, "old hybrid export")
    assert report.encoder_fraction == 1.0
    for key, digest in report.digests.items():
        assert digest == raw_sha1(hybrid[key[len("backbone."):]]), key
    swin, record = load_export(old["exports"]["swin"])
    from monai.networks.nets import SwinUNETR
    target = SwinUNETR(in_channels=1, out_channels=2, feature_size=12)
    target.swinViT.load_state_dict(swin, strict=True)
    assert record["backbone"] == "swin" and record["normalisation"]["CT"]["window"] == [-1000.0, 1000.0]
    assert torch.equal(target.swinViT.patch_embed.proj.weight, swin["patch_embed.proj.weight"])


def test_model_folder_of_0_1_0_predicts_the_same_with_stock_nnunet(old):
    work = old["work"]
    run(old["predict"] + ["-o", work / "pred_new"], old["new_env"], work)
    old_files = sorted((work / "pred_old").glob("*.nii.gz"))
    assert old_files
    for path in old_files:
        a = sitk.ReadImage(str(path))
        b = sitk.ReadImage(str(work / "pred_new" / path.name))
        assert np.array_equal(sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b)), path.name
        assert a.GetSpacing() == b.GetSpacing() and a.GetOrigin() == b.GetOrigin()
