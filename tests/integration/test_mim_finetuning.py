"""MiM fine-tuning through stock nnU-Net, in subprocesses: mim_pretrain (tiny) -> plan -> check-transfer ->
nnUNetv2_train with each MiM trainer -> pre-training files deleted -> nnUNetv2_predict; a 4-channel dataset
with an inflated stem; -pretrained_weights through expand-weights; lr schedule across --c."""

import json
import shutil
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from helpers.commands import command, nnunet_env, run
from helpers.exports import raw_sha1
from helpers.synthetic import LABELS, write_dataset
from mim_nnunet.finetune.loading import load_nnunet_checkpoint
from mim_nnunet.weights.export import load_export

DATASET, DATASET4 = 902, 903
HYBRID, SWIN = "nnUNetTrainerMiM_tiny_1epoch", "nnUNetTrainerMiMSwinUNETR_tiny_1epoch"
pytestmark = pytest.mark.slow


def four_channel_copy(root: Path, raw: Path) -> Path:
    """Dataset903: the same cases with 4 channels (the image and three transformed copies)."""
    target = raw / f"Dataset{DATASET4:03d}_MiMFour"
    shutil.copytree(root / "labelsTr", target / "labelsTr")
    (target / "imagesTr").mkdir()
    for image in sorted((root / "imagesTr").glob("*_0000.nii.gz")):
        itk = sitk.ReadImage(str(image))
        for c in range(4):
            copy = sitk.GetImageFromArray(sitk.GetArrayFromImage(itk) * (1 + c) + 10 * c)
            copy.CopyInformation(itk)
            sitk.WriteImage(copy, str(target / "imagesTr" / image.name.replace("_0000", f"_{c:04d}")))
    meta = json.loads((root / "dataset.json").read_text(encoding="utf-8"))
    meta["channel_names"] = {str(c): f"ch{c}" for c in range(4)}
    meta["numTraining"] = len(list((target / "labelsTr").glob("*.nii.gz")))
    (target / "dataset.json").write_text(json.dumps(meta))
    return target


@pytest.fixture(scope="module")
def setup(module_tmp):
    work = module_tmp("mim")
    env = nnunet_env(work)
    root = write_dataset(work / "nnUNet_raw", DATASET, num_train=5, num_test=2, shape=(64, 64, 64), seed=2)
    run([command("nnUNetv2_plan_and_preprocess"), "-d", DATASET, "-c", "3d_fullres", "-np", "2"], env, work)
    exports = {}
    for backbone in ("hybrid", "swin"):
        run([command("mim_pretrain"), "-d", DATASET, "-data_name", "pre",
             "-backbone", backbone, "-size", "tiny", "-np", "1",
             "-input_size", "32", "-batch", "1", "-accum", "1", "-steps", "2", "-workers", "0"], env, work)
        exports[backbone] = Path(env["nnUNet_results"]) / "MiM_pre" / f"{backbone}_tiny" / "export" / \
            f"mim_{backbone}_tiny.safetensors"
    kept = work / "kept" / "mim_hybrid_tiny.safetensors"          # a copy that outlives the deletion below
    kept.parent.mkdir()
    for suffix in (".safetensors", ".json"):
        shutil.copy(exports["hybrid"].with_suffix(suffix), kept.with_suffix(suffix))
    return {"work": work, "env": env, "root": root, "exports": exports, "kept": kept,
            "results": Path(env["nnUNet_results"]) / root.name}


def test_transfer_check_passes_and_fails_with_named_problems(setup):
    env, work, exports = setup["env"], setup["work"], setup["exports"]
    check = [command("mim_nnunet"), "check-transfer", "-d", DATASET]
    good = run(check + ["-tr", HYBRID, exports["hybrid"]], env, work)
    assert "100.00% of" in good.stdout and "transfer check passed" in good.stdout
    assert "backbone.blocks4" in good.stdout and "position embedding interpolated" in good.stdout
    # truncated export
    cut = work / "cut.safetensors"
    cut.write_bytes(exports["hybrid"].read_bytes()[:5000])
    shutil.copy(exports["hybrid"].with_suffix(".json"), cut.with_suffix(".json"))
    failures = {
        "truncated": (run(check + ["-tr", HYBRID, cut], env, work, ok=False), "cut.safetensors: corrupt"),
        "backbone": (run(check + ["-tr", HYBRID, exports["swin"]], env, work, ok=False),
                     "a 'swin' export, but MiMUNETR needs a 'hybrid' one"),
        "shapes": (run(check + ["-tr", "nnUNetTrainerMiM", exports["hybrid"]], env, work, ok=False),
                   "the export is hybrid 'tiny' (feature width 12), nnUNetTrainerMiM builds hybrid 'base' (feature "
                   "width 48): use nnUNetTrainerMiM_tiny_* (e.g. nnUNetTrainerMiM_tiny_1epoch) or a 'base' export"),
        "scratch": (run(check + ["-tr", "nnUNetTrainerMiMScratch_tiny_1epoch", exports["hybrid"]], env, work, ok=False),
                    "nnUNetTrainerMiMScratch_tiny_1epoch trains from random weights: there is nothing to transfer"),
    }
    for name, (result, message) in failures.items():
        assert result.returncode == 2 and message in result.stderr, (name, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, name
    swin = run(check + ["-tr", SWIN, exports["swin"]], env, work)
    assert "100.00% of" in swin.stdout


def test_each_mim_trainer_fine_tunes_from_the_export_and_predicts_without_it(setup):
    env, work, exports, results = setup["env"], setup["work"], setup["exports"], setup["results"]
    for trainer, backbone in ((HYBRID, "hybrid"), (SWIN, "swin")):
        run([command("nnUNetv2_train"), DATASET, "3d_fullres", "0", "-tr", trainer, "-device", "cpu"], env, work)
        report = json.loads((results / f"{trainer}__nnUNetPlans__3d_fullres" / "fold_0" / "mim_transfer.json")
                            .read_text(encoding="utf-8"))
        assert "newest" in report["how"] and report["encoder_fraction"] == 1.0
        state, _ = load_export(exports[backbone])
        prefix = "backbone." if backbone == "hybrid" else "swinViT."
        compared = [k for k in report["digests"] if k not in report["adapted"]]
        assert len(compared) > 20
        for key in compared:          # the network's encoder at the start of fine-tuning = the export
            assert report["digests"][key] == raw_sha1(state[key[len(prefix):]]), key
    # prediction needs only the fine-tuned model: delete every pre-training file first
    for folder in (Path(env["nnUNet_results"]) / "MiM_pre", Path(env["nnUNet_preprocessed"]) / "MiM_pre"):
        shutil.rmtree(folder)
    for trainer in (HYBRID, SWIN):
        out = work / f"pred_{trainer}"
        run([command("nnUNetv2_predict"), "-i", setup["root"] / "imagesTs", "-o", out, "-d", DATASET, "-c",
             "3d_fullres", "-f", "0", "-tr", trainer, "--disable_tta", "-device", "cpu", "-npp", "1", "-nps", "1"],
            env, work)
        preds = sorted(out.glob("*.nii.gz"))
        assert len(preds) == 2
        for p in preds:
            assert set(np.unique(sitk.GetArrayFromImage(sitk.ReadImage(str(p))))) <= set(LABELS.values())
    # nnU-Net's validation with probabilities (--val --npz) also runs from the fine-tuned model alone
    run([command("nnUNetv2_train"), DATASET, "3d_fullres", "0", "-tr", HYBRID, "-device", "cpu", "--val", "--npz"],
        env, work)
    validation = results / f"{HYBRID}__nnUNetPlans__3d_fullres" / "fold_0" / "validation"
    assert (validation / "summary.json").is_file() and list(validation.glob("*.npz"))


def test_unusable_weights_stop_in_one_line_before_workers_and_keep_the_trained_fold(setup):
    """A NaN export (its checksum intact: NaN before export) is refused by check-transfer and by
    nnUNetv2_train, in one line, before nnU-Net starts its workers; the fold trained above is kept."""
    from mim_nnunet.weights.export import write_export
    env, work, results = dict(setup["env"]), setup["work"], setup["results"]
    state, record = load_export(setup["kept"])
    key = "blocks4.0.attn.qkv.weight"
    state[key] = state[key].clone()
    state[key][0, :3] = float("nan")
    bad, _ = write_export(state, {k: v for k, v in record.items() if k != "sha256"}, work / "nan" / "nan.safetensors")
    message = f"{bad}: tensor '{key}' holds 3 non-finite value(s) (NaN/inf); refusing to fine-tune from it"
    check = run([command("mim_nnunet"), "check-transfer", "-d", DATASET, "-tr", HYBRID, bad], env, work, ok=False)
    assert check.returncode == 2 and message in check.stderr and len(check.stderr.strip().splitlines()) == 1
    fold = results / f"{HYBRID}__nnUNetPlans__3d_fullres" / "fold_0"
    final = (fold / "checkpoint_final.pth").read_bytes()
    env["MIM_PRETRAINED_WEIGHTS"] = str(bad)
    train = run([command("nnUNetv2_train"), DATASET, "3d_fullres", "0", "-tr", HYBRID, "-device", "cpu"], env, work,
                ok=False)
    assert train.returncode == 2, train.stderr[-2000:]
    assert train.stderr.strip().splitlines()[-1] == f"{HYBRID}: error: {message}"
    assert "Traceback" not in train.stderr and "background workers" not in train.stdout + train.stderr
    assert (fold / "checkpoint_final.pth").read_bytes() == final


def test_four_channel_dataset_trains_with_an_inflated_stem(setup):
    env, work = dict(setup["env"]), setup["work"]
    four_channel_copy(setup["root"], Path(env["nnUNet_raw"]))
    run([command("nnUNetv2_plan_and_preprocess"), "-d", DATASET4, "-c", "3d_fullres", "-np", "2"], env, work)
    env["MIM_PRETRAINED_WEIGHTS"] = str(setup["kept"])
    run([command("nnUNetv2_train"), DATASET4, "3d_fullres", "0", "-tr", HYBRID, "-device", "cpu"], env, work)
    folder = Path(env["nnUNet_results"]) / f"Dataset{DATASET4:03d}_MiMFour" / f"{HYBRID}__nnUNetPlans__3d_fullres"
    report = json.loads((folder / "fold_0" / "mim_transfer.json").read_text(encoding="utf-8"))
    assert report["how"] == "$MIM_PRETRAINED_WEIGHTS"
    assert "inflated from 1 to 4" in report["adapted"]["backbone.patch_embed1.proj.weight"]
    assert (folder / "fold_0" / "checkpoint_final.pth").is_file()


def test_expanded_export_works_with_nnunets_own_pretrained_weights_loader(setup):
    env, work = setup["env"], setup["work"]
    export = setup["kept"]
    out = work / "expanded.pth"
    result = run([command("mim_nnunet"), "expand-weights", "-d", DATASET, "-tr", HYBRID, export, "-o", out], env, work)
    assert f"-pretrained_weights {out}" in result.stdout
    assert set(load_nnunet_checkpoint(out)) == {"network_weights"}      # plain tensors: passes the trainers' check
    script = textwrap.dedent(f"""
        import torch
        from nnunetv2.run.load_pretrained_weights import load_pretrained_weights
        from mim_nnunet.finetune.dataset_network import network_for_dataset
        from mim_nnunet.weights.export import load_export
        net = network_for_dataset("{DATASET}", "{HYBRID}").network
        load_pretrained_weights(net, r"{out}")          # nnU-Net's loader: every key, same shapes
        state, _ = load_export(r"{export}")
        assert torch.equal(net.backbone.blocks4[0].attn.qkv.weight, state["blocks4.0.attn.qkv.weight"])
        print("nnU-Net loaded it")
    """)
    result = run([sys.executable, "-c", script], env, work)
    assert "nnU-Net loaded it" in result.stdout
    # and through nnUNetv2_train: the trainer sees the loaded weights and does not search for an export
    run([command("nnUNetv2_train"), DATASET, "3d_fullres", "1", "-tr", HYBRID, "-device", "cpu",
         "-pretrained_weights", out], env, work)
    fold = setup["results"] / f"{HYBRID}__nnUNetPlans__3d_fullres" / "fold_1"
    log = "".join(p.read_text(encoding="utf-8") for p in fold.glob("training_log_*.txt"))
    assert "weights were loaded with -pretrained_weights; not searching" in log
    assert not (fold / "mim_transfer.json").exists()


def test_lr_schedule_survives_checkpoint_and_continue(setup):
    """nnU-Net's own save_checkpoint / load_checkpoint, then the step nnU-Net takes at each epoch start:
    mid-warm-up (epoch 10 of 50 warm-up epochs) and after it (epoch 400), the lr is on its schedule."""
    env, work = setup["env"], setup["work"]
    script = textwrap.dedent(f"""
        import json, os, torch
        from nnunetv2.run.run_training import get_trainer_from_args
        def make(continue_training):          # as nnUNetv2_train builds it
            t = get_trainer_from_args("{DATASET}", "3d_fullres", 0, "nnUNetTrainerMiMScratch", "nnUNetPlans",
                                      continue_training, torch.device("cpu"))
            t.initialize()
            return t
        out = {{}}
        for epoch in (10, 400):
            first = make(False)
            first.current_epoch = epoch - 1       # nnU-Net saves the epoch to continue with: current + 1
            os.makedirs(first.output_folder, exist_ok=True)
            first.save_checkpoint(first.output_folder + "/ck.pth")
            second = make(True)
            second.load_checkpoint(first.output_folder + "/ck.pth")
            second.lr_scheduler.step(second.current_epoch)     # what on_train_epoch_start does
            out[epoch] = [second.current_epoch, second.optimizer.param_groups[0]["lr"], second.num_epochs]
        print(json.dumps(out))
    """)
    result = run([sys.executable, "-c", script], env, work)
    values = json.loads(result.stdout.strip().splitlines()[-1])
    for epoch, (current, lr, total) in values.items():
        epoch, warmup = int(epoch), round(0.05 * total)
        assert current == epoch and total == 1000 and warmup == 50
        expected = 1e-4 * ((epoch + 1) / (warmup + 1) if epoch < warmup else
                           0.5 * (1 + np.cos(np.pi * (epoch - warmup) / (total - warmup))))
        assert lr == pytest.approx(expected, rel=1e-9), epoch


def test_a_short_variant_validates_a_bounded_number_of_cases_and_says_so(setup):
    """nnU-Net's final validation, run by the trainer itself on fold 'all' (every one of the 5 training cases is a
    validation case): the 1-epoch budget predicts its first case only and the log says how many of how many."""
    from mim_nnunet.finetune.variants import BUDGETS
    env, work, results = setup["env"], setup["work"], setup["results"]
    trainer = "nnUNetTrainerMiMScratch_tiny_1epoch"
    script = textwrap.dedent(f"""
        import torch
        from nnunetv2.run.run_training import get_trainer_from_args
        t = get_trainer_from_args("{DATASET}", "3d_fullres", "all", "{trainer}", "nnUNetPlans", False,
                                  torch.device("cpu"))
        t.initialize()
        t.perform_actual_validation()
    """)
    run([sys.executable, "-c", script], env, work)
    fold = results / f"{trainer}__nnUNetPlans__3d_fullres" / "fold_all"
    limit = BUDGETS["1epoch"].val_cases
    predicted = sorted(p.name for p in (fold / "validation").glob("*.nii.gz"))
    cases = sorted(p.name for p in (setup["root"] / "labelsTr").glob("*.nii.gz"))
    assert limit == 1 and len(cases) == 5 and predicted == cases[:limit]
    summary = json.loads((fold / "validation" / "summary.json").read_text(encoding="utf-8"))
    assert len(summary["metric_per_case"]) == limit
    log = "".join(p.read_text(encoding="utf-8") for p in fold.glob("training_log_*.txt"))
    assert "final validation on 1 of the fold's 5 validation case(s): budget '1epoch' bounds it" in log
