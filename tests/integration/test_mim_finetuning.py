"""MiM fine-tuning through stock nnU-Net, in subprocesses: plan -> mim_pretrain (tiny) -> check-transfer ->
nnUNetv2_train with each MiM trainer -> pre-training files moved away -> nnUNetv2_predict (the
session's runs, tests/helpers/shared_runs.py; the SwinUNETR model folder as stock nnU-Net writes it); a
2-channel dataset's network with an inflated stem; -pretrained_weights through expand-weights; lr schedule
across --c."""

import hashlib
import json
import shutil
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from helpers.commands import command, nnunet_env, plan_with_fewer_samples, run, run_main
from helpers.exports import raw_sha1
from helpers.shared_runs import DATASET, TRAINERS
from helpers.synthetic import LABELS, write_dataset
from mim_nnunet.finetune.dataset_network import network_for_dataset
from mim_nnunet.finetune.loading import load_nnunet_checkpoint
from mim_nnunet.weights.export import load_export

DATASET_MULTI = 903
CHANNELS = 2
HYBRID, SWIN = TRAINERS["hybrid"], TRAINERS["swin"]
pytestmark = pytest.mark.slow


def multi_channel_copy(root: Path, raw: Path, cases: int = 2) -> Path:
    """Dataset903: the first ``cases`` cases with CHANNELS channels (the image and transformed copies)."""
    target = raw / f"Dataset{DATASET_MULTI:03d}_MiMMulti"
    (target / "imagesTr").mkdir(parents=True)
    (target / "labelsTr").mkdir()
    for image in sorted((root / "imagesTr").glob("*_0000.nii.gz"))[:cases]:
        label = image.name.replace("_0000", "")
        shutil.copy(root / "labelsTr" / label, target / "labelsTr" / label)
        itk = sitk.ReadImage(str(image))
        for c in range(CHANNELS):
            copy = sitk.GetImageFromArray(sitk.GetArrayFromImage(itk) * (1 + c) + 10 * c)
            copy.CopyInformation(itk)
            sitk.WriteImage(copy, str(target / "imagesTr" / image.name.replace("_0000", f"_{c:04d}")))
    meta = json.loads((root / "dataset.json").read_text(encoding="utf-8"))
    meta["channel_names"] = {str(c): f"ch{c}" for c in range(CHANNELS)}
    meta["numTraining"] = cases
    (target / "dataset.json").write_text(json.dumps(meta))
    return target


@pytest.fixture(scope="module")
def setup(mim_exports):
    """The session's planned Dataset902 and exports (tests/helpers/shared_runs.py), read only."""
    return {**mim_exports, "kept": mim_exports["exports"]["hybrid"]}


def test_transfer_check_passes_and_fails_with_named_problems(setup, tmp_path, monkeypatch, capsys):
    """The command as users run it once (a subprocess); its refusals through the same entry point in this process
    (``mim_nnunet.cli.main.main``: the exit status and the one line on stderr are the command's)."""
    from mim_nnunet.cli.main import main
    env, work, exports = setup["env"], setup["work"], setup["exports"]
    check = [command("mim_nnunet"), "check-transfer", "-d", DATASET]
    good = run(check + ["-tr", HYBRID, exports["hybrid"]], env, work)
    assert "100.00% of" in good.stdout and "transfer check passed" in good.stdout
    assert "backbone.blocks4" in good.stdout and "position embedding interpolated" in good.stdout
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_extTrainer"):
        monkeypatch.setenv(name, env[name])
    monkeypatch.chdir(work)

    def check_here(trainer, export):
        result = run_main(main, ["check-transfer", "-d", DATASET, "-tr", trainer, export], capsys)
        return result.returncode, result.stdout, result.stderr

    # truncated export
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(exports["hybrid"].read_bytes()[:5000])
    shutil.copy(exports["hybrid"].with_suffix(".json"), cut.with_suffix(".json"))
    failures = {
        "truncated": (check_here(HYBRID, cut), "cut.safetensors: corrupt"),
        "backbone": (check_here(HYBRID, exports["swin"]), "a 'swin' export, but MiMUNETR needs a 'hybrid' one"),
        "shapes": (check_here("nnUNetTrainerMiM", exports["hybrid"]),
                   "the export is hybrid 'tiny' (feature width 12), nnUNetTrainerMiM builds hybrid 'base' (feature "
                   "width 48): use nnUNetTrainerMiM_tiny_* (e.g. nnUNetTrainerMiM_tiny_1epoch) or a 'base' export"),
        "scratch": (check_here("nnUNetTrainerMiMScratch_tiny_1epoch", exports["hybrid"]),
                    "nnUNetTrainerMiMScratch_tiny_1epoch trains from random weights: there is nothing to transfer"),
    }
    for name, ((status, _, err), message) in failures.items():
        assert status == 2 and message in err, (name, err)
        assert len(err.strip().splitlines()) == 1, name
    status, out, _ = check_here(SWIN, exports["swin"])
    assert status == 0 and "100.00% of" in out


def test_each_mim_trainer_fine_tunes_from_the_export_and_predicts_without_it(mim_finetuned):
    """The session's fine-tuning (tests/helpers/shared_runs.py): each trainer found the newest export under
    $nnUNet_results and started from it; the hybrid's final validation kept its probabilities (--npz); prediction
    ran with every pre-training file gone."""
    exports, models = mim_finetuned["exports"], mim_finetuned["models"]
    for trainer, backbone in ((HYBRID, "hybrid"), (SWIN, "swin")):
        assert models[backbone].name == f"{trainer}__nnUNetPlans__3d_fullres"
        report = json.loads((models[backbone] / "fold_0" / "mim_transfer.json").read_text(encoding="utf-8"))
        assert "newest" in report["how"] and report["encoder_fraction"] == 1.0
        state, _ = load_export(exports[backbone])
        prefix = "backbone." if backbone == "hybrid" else "swinViT."
        compared = [k for k in report["digests"] if k not in report["adapted"]]
        assert len(compared) > 20
        for key in compared:          # the network's encoder at the start of fine-tuning = the export
            assert report["digests"][key] == raw_sha1(state[key[len(prefix):]]), key
    for backbone, folder in mim_finetuned["predictions"].items():
        preds = sorted(folder.glob("*.nii.gz"))
        assert len(preds) == 2, backbone
        for p in preds:
            assert set(np.unique(sitk.GetArrayFromImage(sitk.ReadImage(str(p))))) <= set(LABELS.values())
    validation = models["hybrid"] / "fold_0" / "validation"
    assert (validation / "summary.json").is_file() and list(validation.glob("*.npz"))
    for folder in models.values():          # on the CPU both networks train channels-last (RunGuards)
        log = "".join(p.read_text(encoding="utf-8") for p in (folder / "fold_0").glob("training_log_*.txt"))
        assert "CPU: the network trains with channels-last (NDHWC) tensors" in log


def test_swin_predictions_keep_the_input_geometry_and_the_model_folder_records_the_trainer(mim_finetuned):
    """The SwinUNETR model folder as stock nnU-Net wrote it: the checkpoint names our trainer and holds a
    SwinUNETR, plans.json names MONAI's class at feature size 12 with a patch of multiples of 32, and the
    predictions have the inputs' size, spacing, origin and direction."""
    model, out = mim_finetuned["models"]["swin"], mim_finetuned["predictions"]["swin"]
    inputs = sorted((mim_finetuned["root"] / "imagesTs").glob("*_0000.nii.gz"))
    assert len(inputs) == 2
    for image_path in inputs:
        pred_path = out / image_path.name.replace("_0000.nii.gz", ".nii.gz")
        assert pred_path.is_file(), f"no prediction for {image_path.name}"
        image, pred = sitk.ReadImage(str(image_path)), sitk.ReadImage(str(pred_path))
        assert pred.GetSize() == image.GetSize()
        assert np.allclose(pred.GetSpacing(), image.GetSpacing())
        assert np.allclose(pred.GetOrigin(), image.GetOrigin())
        assert np.allclose(pred.GetDirection(), image.GetDirection())
        assert set(np.unique(sitk.GetArrayFromImage(pred))) <= set(LABELS.values())
    ckpt = load_nnunet_checkpoint(model / "fold_0" / "checkpoint_final.pth")
    assert ckpt["trainer_name"] == SWIN
    assert any(k.startswith("swinViT.") for k in ckpt["network_weights"])    # a SwinUNETR was trained
    config = json.loads((model / "plans.json").read_text(encoding="utf-8"))["configurations"]["3d_fullres"]
    assert config["architecture"]["network_class_name"] == "monai.networks.nets.SwinUNETR"
    assert config["architecture"]["arch_kwargs"]["feature_size"] == 12
    assert all(s % 32 == 0 for s in config["patch_size"])
    assert (model / "fold_0" / "progress.png").is_file()


def own_results(setup, tmp_path, *models) -> dict:
    """The session's environment with nnUNet_results in ``tmp_path`` (copies of ``models`` in it): a test
    that trains writes there, never into the shared model folders."""
    results = tmp_path / "nnUNet_results"
    for model in models:
        shutil.copytree(model, results / model.parent.name / model.name)
    results.mkdir(exist_ok=True)
    return dict(setup["env"], nnUNet_results=str(results))


def test_unusable_weights_stop_in_one_line_before_workers_and_keep_the_trained_fold(setup, mim_finetuned, tmp_path):
    """A NaN export (written around our writer, which refuses NaN; its checksum intact) is refused by
    check-transfer and by nnUNetv2_train, in one line, before nnU-Net starts its workers; the trained fold (a
    copy of the session's) is kept."""
    from safetensors.torch import save_file
    env, work = own_results(setup, tmp_path, mim_finetuned["models"]["hybrid"]), setup["work"]
    state, record = load_export(setup["kept"])
    key = "blocks4.0.attn.qkv.weight"
    state[key] = state[key].clone()
    state[key][0, :3] = float("nan")
    bad = tmp_path / "nan" / "nan.safetensors"
    bad.parent.mkdir()
    save_file({k: v.contiguous() for k, v in state.items()}, str(bad))
    sha256 = hashlib.sha256(bad.read_bytes()).hexdigest()          # the file's own checksum: intact
    bad.with_suffix(".json").write_text(json.dumps({**record, "sha256": sha256}), encoding="utf-8")
    message = f"{bad}: tensor '{key}' holds 3 non-finite value(s) (NaN/inf); refusing to fine-tune from it"
    check = run([command("mim_nnunet"), "check-transfer", "-d", DATASET, "-tr", HYBRID, bad], env, work, ok=False)
    assert check.returncode == 2 and message in check.stderr and len(check.stderr.strip().splitlines()) == 1
    fold = Path(env["nnUNet_results"]) / setup["root"].name / f"{HYBRID}__nnUNetPlans__3d_fullres" / "fold_0"
    final = (fold / "checkpoint_final.pth").read_bytes()
    env["MIM_PRETRAINED_WEIGHTS"] = str(bad)
    train = run([command("nnUNetv2_train"), DATASET, "3d_fullres", "0", "-tr", HYBRID, "-device", "cpu"], env, work,
                ok=False)
    assert train.returncode == 2, train.stderr[-2000:]
    assert train.stderr.strip().splitlines()[-1] == f"{HYBRID}: error: {message}"
    assert "Traceback" not in train.stderr and "background workers" not in train.stdout + train.stderr
    assert (fold / "checkpoint_final.pth").read_bytes() == final


def test_multi_channel_dataset_gets_the_network_nnunet_trains_with_an_inflated_stem(setup, tmp_path, monkeypatch,
                                                                                     capsys):
    """Dataset903 (2 channels) planned by nnU-Net (plans only: the network needs no preprocessed data; the
    fingerprint's intensity statistics from fewer voxels, ``helpers.commands.plan_with_fewer_samples``):
    check-transfer builds the MiM trainer's network for its plans as nnUNetv2_train does (2 input channels) and
    loads the 1-channel export, the stem inflated. Training from an export the trainer finds is the session's
    runs (tests/helpers/shared_runs.py)."""
    from mim_nnunet.cli.main import main
    env, work = nnunet_env(tmp_path), tmp_path              # a workspace of its own: the session's is read only
    small = write_dataset(tmp_path / "one_channel", DATASET_MULTI, num_train=2, num_test=0, shape=(32, 32, 32), seed=6)
    multi_channel_copy(small, Path(env["nnUNet_raw"]))
    plan_with_fewer_samples(["-d", DATASET_MULTI, "-c", "3d_fullres", "-npfp", "1", "--no_pp"], env, work)
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_extTrainer"):
        monkeypatch.setenv(name, env[name])
    network = network_for_dataset(str(DATASET_MULTI), HYBRID).network
    assert network.backbone.patch_embed1.proj.weight.shape[1] == CHANNELS
    result = run_main(main, ["check-transfer", "-d", DATASET_MULTI, "-tr", HYBRID, setup["kept"]], capsys)
    assert result.returncode == 0 and "transfer check passed" in result.stdout, result.stderr
    assert f"inflated from 1 to {CHANNELS}" in result.stdout


def test_expanded_export_works_with_nnunets_own_pretrained_weights_loader(setup, tmp_path, monkeypatch):
    import torch
    from nnunetv2.run.load_pretrained_weights import load_pretrained_weights
    env, work = own_results(setup, tmp_path), setup["work"]     # fold 1 is trained into tmp_path
    export = setup["kept"]
    out = tmp_path / "expanded.pth"
    result = run([command("mim_nnunet"), "expand-weights", "-d", DATASET, "-tr", HYBRID, export, "-o", out], env, work)
    assert f"-pretrained_weights {out}" in result.stdout
    assert set(load_nnunet_checkpoint(out)) == {"network_weights"}      # plain tensors: passes the trainers' check
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_extTrainer"):
        monkeypatch.setenv(name, env[name])
    net = network_for_dataset(str(DATASET), HYBRID).network
    load_pretrained_weights(net, str(out))                      # nnU-Net's loader: every key, same shapes
    state, _ = load_export(export)
    assert torch.equal(net.backbone.blocks4[0].attn.qkv.weight, state["blocks4.0.attn.qkv.weight"])
    # and through nnUNetv2_train: the trainer sees the loaded weights and does not search for an export (the
    # quick budget's trainer: the same network, without the final validation this check does not need)
    quick = "nnUNetTrainerMiM_tiny_quick"
    run([command("nnUNetv2_train"), DATASET, "3d_fullres", "1", "-tr", quick, "-device", "cpu",
         "-pretrained_weights", out], env, work)
    fold = Path(env["nnUNet_results"]) / setup["root"].name / f"{quick}__nnUNetPlans__3d_fullres" / "fold_1"
    log = "".join(p.read_text(encoding="utf-8") for p in fold.glob("training_log_*.txt"))
    assert "weights were loaded with -pretrained_weights; not searching" in log
    assert not (fold / "mim_transfer.json").exists()


def test_lr_schedule_survives_checkpoint_and_continue(setup, tmp_path):
    """nnU-Net's own save_checkpoint / load_checkpoint, then the step nnU-Net takes at each epoch start:
    mid-warm-up (epoch 10 of 50 warm-up epochs) and after it (epoch 400), the lr is on its schedule."""
    env, work = own_results(setup, tmp_path), setup["work"]
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


def test_a_short_variant_validates_a_bounded_number_of_cases_and_says_so(setup, tmp_path):
    """nnU-Net's final validation, run by the trainer itself on fold 'all' (every one of the 5 training cases is a
    validation case): the 1-epoch budget predicts its first case only and the log says how many of how many."""
    from mim_nnunet.finetune.variants import BUDGETS
    env, work = own_results(setup, tmp_path), setup["work"]       # the trainer's folder goes to tmp_path
    results = Path(env["nnUNet_results"]) / setup["root"].name
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
    assert limit == 1 and len(cases) == 5 and len(predicted) == limit and set(predicted) <= set(cases)
    summary = json.loads((fold / "validation" / "summary.json").read_text(encoding="utf-8"))
    assert len(summary["metric_per_case"]) == limit
    log = "".join(p.read_text(encoding="utf-8") for p in fold.glob("training_log_*.txt"))
    assert "final validation on 1 of the fold's 5 validation case(s): budget '1epoch' bounds it" in log
