"""Our trainer classes as nnU-Net finds and builds them (no training here: see the integration test)."""

import math
import os
from pathlib import Path

import pytest
import torch
from monai.networks.nets import SwinUNETR
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

from helpers.exports import MRI_RECORD, hybrid_export
from helpers.plans_factory import DATASET_JSON, make_plans
from mim_nnunet.common.environment import trainers_dir
from mim_nnunet.common.errors import PlansError
from mim_nnunet.optim import WarmupCosineLR


@pytest.fixture
def find_trainer(monkeypatch, nnunet_dirs):
    monkeypatch.setenv("nnUNet_extTrainer", str(trainers_dir()))
    return recursive_find_trainer_class_by_name


def make_trainer(cls, configuration="3d_fullres", patch_3d=(80, 160, 100)):
    plans = make_plans(patch_3d=patch_3d)
    plans["continue_training"] = False          # what nnUNetv2_train adds before building a trainer
    return cls(plans=plans, configuration=configuration, fold=0, dataset_json=dict(DATASET_JSON),
               device=torch.device("cpu"))


def test_trainer_adapts_plans_and_turns_off_deep_supervision(find_trainer):
    trainer = make_trainer(find_trainer("nnUNetTrainerSwinUNETR"))
    assert trainer.configuration_manager.patch_size == [96, 160, 96]
    # the dict nnU-Net writes to <model folder>/plans.json on train start
    saved = trainer.plans_manager.plans["configurations"]["3d_fullres"]
    assert saved["patch_size"] == [96, 160, 96]
    assert saved["architecture"]["network_class_name"] == "monai.networks.nets.SwinUNETR"
    assert saved["architecture"]["arch_kwargs"]["feature_size"] == 48
    assert trainer.enable_deep_supervision is False
    loss = trainer._build_loss()
    assert not isinstance(loss, DeepSupervisionWrapper)
    assert trainer._get_deep_supervision_scales() is None


def test_built_network_is_monai_swinunetr_with_short_variant_size(find_trainer):
    trainer = make_trainer(find_trainer("nnUNetTrainerSwinUNETR_fs12_1epoch"))
    net = trainer.build_network_architecture(trainer.plans_manager, trainer.configuration_manager, 1,
                                             trainer.label_manager.num_segmentation_heads, True)
    assert isinstance(net, SwinUNETR)
    assert net.swinViT.patch_embed.proj.out_channels == 12 and net.out.conv.conv.out_channels == 3
    assert (trainer.num_epochs, trainer.num_iterations_per_epoch, trainer.num_val_iterations_per_epoch) == (1, 2, 1)
    trainer.set_deep_supervision_enabled(True)   # nnU-Net calls this on every network; must not fail


def test_optimiser_is_adamw_with_warmup_then_cosine(find_trainer):
    trainer = make_trainer(find_trainer("nnUNetTrainerSwinUNETR"))
    trainer.network = torch.nn.Linear(4, 2)
    optimizer, scheduler = trainer.configure_optimizers()
    assert isinstance(optimizer, torch.optim.AdamW) and isinstance(scheduler, WarmupCosineLR)
    assert {g["weight_decay"] for g in optimizer.param_groups} == {1e-5, 0.0}
    # 1000 epochs, 5 % warm-up = 50 epochs, lr 1e-4 (values by hand)
    expected = {0: 1e-4 / 51, 49: 1e-4 * 50 / 51, 50: 1e-4, 525: 0.5e-4, 999: 0.5e-4 * (1 + torch.cos(
        torch.tensor(torch.pi * 949 / 950, dtype=torch.float64)).item())}
    for epoch, lr in expected.items():
        scheduler.step(epoch)                    # as nnU-Net's on_train_epoch_start does
        assert optimizer.param_groups[0]["lr"] == pytest.approx(lr, rel=1e-9), epoch


def test_short_budget_sets_its_own_peak_lr_for_both_networks(find_trainer):
    # the demo budget: 12 epochs x 10 iterations at 3e-3 (the recipe's 1e-4 is for 1000 epochs);
    # warm-up 5 % of 12 epochs, rounded = 1 epoch: epoch 1 at the peak, then cosine over the 11 left
    for name in ("nnUNetTrainerMiM_tiny_demo", "nnUNetTrainerMiMScratch_tiny_demo"):
        trainer = make_trainer(find_trainer(name), patch_3d=(32, 64, 64))
        assert (trainer.num_epochs, trainer.num_iterations_per_epoch, trainer.initial_lr) == (12, 10, 3e-3)
        trainer.network = torch.nn.Linear(4, 2)
        optimizer, scheduler = trainer.configure_optimizers()
        for epoch, lr in {0: 3e-3 / 2, 1: 3e-3, 6: 3e-3 * 0.5 * (1 + math.cos(math.pi * 5 / 11))}.items():
            scheduler.step(epoch)
            assert optimizer.param_groups[0]["lr"] == pytest.approx(lr, rel=1e-9), (name, epoch)
    # the full-length trainer keeps the recipe's lr
    assert make_trainer(find_trainer("nnUNetTrainerMiMScratch"), patch_3d=(32, 64, 64)).initial_lr == 1e-4


def test_the_demo_budget_trains_without_mirroring(find_trainer):
    from batchgeneratorsv2.transforms.spatial.mirroring import MirrorTransform

    def mirrors(trainer):
        rotation, dummy_2d, _, axes = trainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        pipeline = trainer.get_training_transforms(trainer.configuration_manager.patch_size, rotation, None, axes,
                                                   dummy_2d)
        found = [t for t in pipeline.transforms if isinstance(getattr(t, "transform", t), MirrorTransform)]
        return axes, len(found)

    # the demo budget: no mirror augmentation, no test-time mirroring (nnU-Net's nnUNetTrainerNoMirroring switch)
    for name in ("nnUNetTrainerMiM_tiny_demo", "nnUNetTrainerMiMScratch_tiny_demo"):
        trainer = make_trainer(find_trainer(name), patch_3d=(32, 64, 64))
        assert mirrors(trainer) == (None, 0) and trainer.inference_allowed_mirroring_axes is None, name
    # other budgets keep nnU-Net's mirroring along all three axes in training
    longer = make_trainer(find_trainer("nnUNetTrainerMiM_tiny_10epochs"), patch_3d=(32, 64, 64))
    assert mirrors(longer) == ((0, 1, 2), 1)


def test_2d_plans_are_refused_before_anything_is_written(find_trainer, nnunet_dirs):
    cls = find_trainer("nnUNetTrainerSwinUNETR")
    with pytest.raises(PlansError, match="nnUNetTrainerSwinUNETR is 3D only: configuration '2d'"):
        make_trainer(cls, configuration="2d")
    assert not any(nnunet_dirs["nnUNet_results"].iterdir())


def test_seed_from_the_environment_makes_initialisation_repeatable(monkeypatch):
    from mim_nnunet.finetune.trainer import SEED_ENV, seed_from_environment
    from mim_nnunet.networks import MiMUNETR

    monkeypatch.delenv(SEED_ENV, raising=False)
    assert seed_from_environment() is None
    draws = []
    for seed in ("7", "7", "8"):
        monkeypatch.setenv(SEED_ENV, seed)
        assert seed_from_environment() == int(seed)
        net = MiMUNETR(1, 2, (32, 32, 64), size="tiny", feature_size=12)
        draws.append(net.decoder1.transp_conv.conv.weight.detach().clone())
    assert torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], draws[2])
    monkeypatch.setenv(SEED_ENV, "seven")
    with pytest.raises(PlansError, match="MIM_SEED='seven': not an integer seed"):
        seed_from_environment()


def test_cpu_threads_from_the_environment_cap_torch(find_trainer, monkeypatch):
    from mim_nnunet.common.errors import MimError
    from mim_nnunet.common.host import THREADS_ENV, threads_from_environment

    monkeypatch.delenv(THREADS_ENV, raising=False)
    assert threads_from_environment() is None
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        monkeypatch.setenv(THREADS_ENV, "1")
        make_trainer(find_trainer("nnUNetTrainerMiMScratch_tiny_1epoch"))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv(THREADS_ENV, bad)
        with pytest.raises(MimError, match=f"MIM_CPU_THREADS='{bad}': not a positive number of threads"):
            threads_from_environment()


def test_a_non_finite_train_loss_stops_before_any_checkpoint_is_written(find_trainer, tmp_path, capsys):
    trainer = make_trainer(find_trainer("nnUNetTrainerMiMScratch_tiny_1epoch"), patch_3d=(32, 64, 64))
    trainer.output_folder = str(tmp_path / "fold_0")
    (tmp_path / "fold_0").mkdir()
    (tmp_path / "fold_0" / "checkpoint_best.pth").write_bytes(b"an earlier, healthy run")
    trainer.logger.log("train_losses", float("nan"), 0)
    with pytest.raises(SystemExit) as stopped:
        trainer.on_epoch_end()
    assert stopped.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"nnUNetTrainerMiMScratch_tiny_1epoch: error: train loss is nan at epoch 0; no checkpoint "
                   f"written (those in {tmp_path / 'fold_0'} are kept). Check the weights and lower the lr."]
    assert (tmp_path / "fold_0" / "checkpoint_best.pth").read_bytes() == b"an earlier, healthy run"
    assert sorted(p.name for p in (tmp_path / "fold_0").iterdir() if p.suffix == ".pth") == ["checkpoint_best.pth"]
    assert trainer.current_epoch == 0        # nnU-Net's on_epoch_end (which counts epochs) never ran
    # a finite train loss with an infinite validation loss stops too
    trainer = make_trainer(find_trainer("nnUNetTrainerMiMScratch_tiny_1epoch"), patch_3d=(32, 64, 64))
    trainer.output_folder = str(tmp_path / "fold_0")
    trainer.logger.log("train_losses", 0.5, 0)
    trainer.logger.log("val_losses", float("inf"), 0)
    with pytest.raises(SystemExit):
        trainer.on_epoch_end()
    assert "error: val loss is inf at epoch 0; no checkpoint written" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "fold_0").iterdir() if p.suffix == ".pth") == ["checkpoint_best.pth"]


def test_the_trainer_says_which_export_it_chose_and_names_a_size_mismatch(find_trainer, nnunet_dirs, monkeypatch):
    from mim_nnunet.weights.finding import WEIGHTS_ENV
    from mim_nnunet.weights.transfer import TransferError

    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    results = nnunet_dirs["nnUNet_results"]
    ct = hybrid_export(results / "MiM_ct" / "hybrid_tiny" / "export", "mim_hybrid_tiny")
    mri = hybrid_export(results / "MiM_mr" / "hybrid_tiny" / "export", "mim_hybrid_tiny", normalisation=MRI_RECORD)
    os.utime(ct, (1, 1))                                               # the MRI export is the newest
    trainer = make_trainer(find_trainer("nnUNetTrainerMiM_tiny_1epoch"), patch_3d=(32, 64, 64))
    trainer.plans_manager.plans["foreground_intensity_properties_per_channel"] = {}   # make_plans has none
    trainer.network = trainer.build_network_architecture(trainer.plans_manager, trainer.configuration_manager, 1,
                                                         trainer.label_manager.num_segmentation_heads, False)
    trainer.load_pretrained_encoder()
    lines = [line for line in Path(trainer.log_file).read_text(encoding="utf-8").splitlines()
             if "MiM: pre-trained encoder" in line]
    # the dataset is CT (DATASET_JSON channel 0): the CT export, in one line with the count and how to pick another
    assert len(lines) == 1 and f"encoder {ct} (found through" in lines[0] and str(mri) not in lines[0]
    assert "chosen from 2 candidates (1 other(s)); pick another with `mim_nnunet set-weights" in lines[0]
    assert f"${WEIGHTS_ENV}=FILE" in lines[0]
    # the same tiny export given to the base trainer: both sizes named, and what fits instead
    base = make_trainer(find_trainer("nnUNetTrainerMiM"), patch_3d=(32, 64, 64))
    base.plans_manager.plans["foreground_intensity_properties_per_channel"] = {}
    base.network = base.build_network_architecture(base.plans_manager, base.configuration_manager, 1,
                                                   base.label_manager.num_segmentation_heads, False)
    with pytest.raises(TransferError) as wrong:
        base.load_pretrained_encoder(str(ct))
    assert str(wrong.value) == (f"{ct}: the export is hybrid 'tiny' (feature width 12), nnUNetTrainerMiM builds "
                                f"hybrid 'base' (feature width 48): use nnUNetTrainerMiM_tiny_* (e.g. "
                                f"nnUNetTrainerMiM_tiny_1epoch) or a 'base' export")


def test_the_quick_budget_is_the_demo_budget_at_one_epoch_without_final_validation(find_trainer, tmp_path):
    from batchgeneratorsv2.transforms.spatial.mirroring import MirrorTransform
    for name in ("nnUNetTrainerMiM_tiny_quick", "nnUNetTrainerMiMScratch_tiny_quick"):
        trainer = make_trainer(find_trainer(name), patch_3d=(32, 64, 64))
        assert (trainer.num_epochs, trainer.num_iterations_per_epoch, trainer.num_val_iterations_per_epoch,
                trainer.initial_lr) == (1, 2, 1, 3e-3)
        rotation, dummy_2d, _, axes = trainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        pipeline = trainer.get_training_transforms(trainer.configuration_manager.patch_size, rotation, None, axes,
                                                   dummy_2d)
        assert axes is None and not [t for t in pipeline.transforms
                                     if isinstance(getattr(t, "transform", t), MirrorTransform)]
        trainer.output_folder = str(tmp_path / name)
        trainer.perform_actual_validation()          # skipped: nothing predicted, nothing written
        assert not (tmp_path / name / "validation").exists()
        assert "final validation skipped: budget 'quick'" in Path(trainer.log_file).read_text(encoding="utf-8")


def test_cpu_channels_last_gives_the_contiguous_networks_loss_and_gradients(find_trainer):
    """The trainers whose networks train faster channels-last on the CPU say so by their attribute (ResEnc
    does not: nnU-Net's ResEnc U-Net is slower so); one step of MiMUNETR and SwinUNETR in NDHWC gives the
    NCDHW network's loss and gradients up to float summation order."""
    from mim_nnunet.networks import MiMUNETR
    assert find_trainer("nnUNetTrainerMiM").cpu_channels_last
    assert find_trainer("nnUNetTrainerSwinUNETR").cpu_channels_last
    assert not find_trainer("nnUNetTrainerMiMResEnc").cpu_channels_last
    x = torch.randn(2, 1, 64, 32, 32, generator=torch.Generator().manual_seed(0))       # deepest stage 2 x 1 x 1
    y = torch.randint(0, 3, (2, 64, 32, 32), generator=torch.Generator().manual_seed(1))
    for build in (lambda: MiMUNETR(1, 3, (64, 32, 32), size="tiny", feature_size=12),
                  lambda: SwinUNETR(in_channels=1, out_channels=3, feature_size=12)):
        results = []
        for channels_last in (False, True):
            torch.manual_seed(0)
            net = build()
            if channels_last:
                net = net.to(memory_format=torch.channels_last_3d)
                conv = next(m for m in net.modules() if isinstance(m, torch.nn.Conv3d) and m.kernel_size == (3, 3, 3))
                assert conv.weight.is_contiguous(memory_format=torch.channels_last_3d)
            loss = torch.nn.functional.cross_entropy(net(x), y)
            loss.backward()
            results.append((loss.item(), {k: p.grad for k, p in net.named_parameters()}))
        (plain_loss, plain), (last_loss, last) = results
        assert last_loss == pytest.approx(plain_loss, rel=1e-5)
        # the whole gradient to 2e-3 (measured: MiMUNETR 2e-6, SwinUNETR 4e-4; a wrong layout is off by O(1));
        # each tensor to 5 % of its size (deep 2 x 1 x 1 attention: 1 %), where rounding noise (a bias before an
        # instance norm, whose exact gradient is 0) counts against the whole gradient's size
        total = torch.cat([g.flatten() for g in plain.values()]).norm()
        assert torch.cat([(last[k] - g).flatten() for k, g in plain.items()]).norm() <= 2e-3 * total
        for key, grad in plain.items():
            assert (last[key] - grad).norm() <= 5e-2 * (grad.norm() + 1e-4 * total), key
