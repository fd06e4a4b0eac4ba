"""The encoder's fine-tuning schedules (``_warmup``, ``_frozen``, ``_encoderlr1en1``) as nnU-Net drives them:
``configure_optimizers`` and ``on_train_epoch_start`` on our trainers, optimizer steps on tiny real networks,
nnU-Net's own ``save_checkpoint``/``load_checkpoint`` for ``--c``. Expected learning rates are written out here
from the formulas (nnU-Net's poly, the recipe's warm-up and cosine), not taken from the code under test."""

import math

import pytest
import torch
import torch.nn.functional as F
from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

from helpers.exports import CT_RECORD
from helpers.plans_factory import DATASET_JSON, make_plans
from mim_nnunet.backbones import build_encoder
from mim_nnunet.common.environment import trainers_dir
from mim_nnunet.common.errors import PlansError
from mim_nnunet.finetune.schedules import (
    ENCODER_LR_SCALE_ENV,
    SCHEDULES,
    encoder_lr_scale_from_environment,
    phases_for,
)
from mim_nnunet.weights.export import NETWORK_PREFIX, encoder_state, export_encoder
from mim_nnunet.weights.finding import WEIGHTS_ENV

FAMILIES = {   # trainer family -> (backbone, the tiny variant whose network the tests train)
    "nnUNetTrainerMiM": ("hybrid", "nnUNetTrainerMiM_tiny_1epoch"),
    "nnUNetTrainerMiMSwinUNETR": ("swin", "nnUNetTrainerMiMSwinUNETR_tiny_1epoch"),
    "nnUNetTrainerMiMResEnc": ("resenc", "nnUNetTrainerMiMResEnc_tiny_1epoch"),
}


@pytest.fixture
def find_trainer(monkeypatch, nnunet_dirs, tmp_path):
    monkeypatch.setenv("nnUNet_extTrainer", str(trainers_dir()))
    monkeypatch.delenv(ENCODER_LR_SCALE_ENV, raising=False)
    # the ResEnc trainers take their architecture from an export at construction: a tiny one
    torch.manual_seed(0)
    encoder, _ = build_encoder("resenc", "tiny", 1, (64, 32, 32))
    path, _ = export_encoder(encoder, "resenc", "tiny", tmp_path / "resenc_tiny.safetensors", in_channels=1,
                             input_size=(64, 32, 32), spacing=[1.0, 1.0, 1.0], normalisation=CT_RECORD)
    monkeypatch.setenv(WEIGHTS_ENV, str(path))
    return recursive_find_trainer_class_by_name


def make_trainer(cls, schedule=None, num_epochs=None):
    """``cls`` as nnUNetv2_train builds it, with its network; ``schedule`` set on a subclass (what a variant in
    trainers/ does), ``num_epochs`` before the optimizer exists (what a budget does)."""
    if schedule is not None:
        cls = type(f"{cls.__name__}_{schedule}", (cls,), {"schedule": schedule})
    plans = make_plans(patch_3d=(32, 32, 32))
    plans["continue_training"] = False
    trainer = cls(plans=plans, configuration="3d_fullres", fold=0, dataset_json=dict(DATASET_JSON),
                  device=torch.device("cpu"))
    if num_epochs is not None:
        trainer.num_epochs = num_epochs
    torch.manual_seed(1)
    trainer.network = trainer.build_network_architecture(trainer.plans_manager, trainer.configuration_manager, 1,
                                                         trainer.label_manager.num_segmentation_heads, False)
    trainer.optimizer, trainer.lr_scheduler = trainer.configure_optimizers()
    trainer.was_initialized = True        # nnU-Net's initialize() did the above (and needs a dataset)
    return trainer


def export_tensors(network, backbone):
    """The network's tensors a MiM export of ``backbone`` writes, found through the export's own key map."""
    encoder, _ = build_encoder(backbone, "tiny", 1, (64, 32, 32) if backbone == "resenc" else (32, 32, 32))
    params = dict(network.named_parameters(remove_duplicate=False))
    keys = [NETWORK_PREFIX[backbone] + k for k in encoder_state(encoder, backbone)]
    return {k: params[k] for k in keys if k in params}


def train_epoch(trainer, epoch, iterations=1):
    """One epoch as nnU-Net's run_training drives it (its hooks), with our own loss on fixed random data (the
    global RNG is seeded per epoch, so that drop-path draws are the same in a run and its resumed twin)."""
    torch.manual_seed(100 + epoch)
    trainer.current_epoch = epoch
    trainer.on_train_epoch_start()
    size = trainer.configuration_manager.patch_size        # 64 x 32 x 32 (MiMUNETR's is its img_size)
    for _ in range(iterations):
        x = torch.randn(1, 1, *size)
        y = torch.randint(0, 3, (1, *size))
        trainer.optimizer.zero_grad(set_to_none=True)
        out = trainer.network(x)
        out = out[0] if isinstance(out, (list, tuple)) else out
        F.cross_entropy(out, y).backward()
        trainer.optimizer.step()


def cosine_recipe_lr(epoch, epochs, lr=1e-4, warmup_fraction=0.05):
    warmup = round(epochs * warmup_fraction)
    if epoch < warmup:
        return lr * (epoch + 1) / (warmup + 1)
    return lr * 0.5 * (1 + math.cos(math.pi * (epoch - warmup) / (epochs - warmup)))


def poly_lr(epoch, epochs, lr=1e-2):
    return lr * (1 - epoch / epochs) ** 0.9


def test_schedules_resolved_for_a_run_length():
    # warm-up: 5 % frozen, 5 % ramp (at least one epoch of each; a 1-epoch run cannot freeze and still train)
    assert phases_for(SCHEDULES["warmup"], 1000)[:3] == (50, 50, 1.0)
    assert phases_for(SCHEDULES["warmup"], 12)[:3] == (1, 1, 1.0)
    assert phases_for(SCHEDULES["warmup"], 1)[:3] == (0, 1, 1.0)
    assert phases_for(SCHEDULES["frozen"], 12)[:3] == (12, 0, 1.0) and phases_for(SCHEDULES["frozen"], 12).never_trained
    assert phases_for(SCHEDULES["encoderlr1en1"], 1000)[:3] == (0, 0, 0.1)
    phases = phases_for(SCHEDULES["warmup"], 1000, scale=0.5)       # $MIM_ENCODER_LR_SCALE replaces the scale
    assert [phases.multiplier(e) for e in (0, 49, 50, 51, 99, 100, 999)] == \
        [0.0, 0.0, 0.5 * 1 / 51, 0.5 * 2 / 51, 0.5 * 50 / 51, 0.5, 0.5]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_each_family_has_the_three_variants(find_trainer, family):
    for suffix, schedule in (("_warmup", "warmup"), ("_frozen", "frozen"), ("_encoderlr1en1", "encoderlr1en1")):
        cls = find_trainer(family + suffix)
        own = {k for k in vars(cls) if not k.startswith("__")}
        assert cls.schedule == schedule and own == {"schedule"} and cls.__mro__[1].__name__ == family


@pytest.mark.parametrize("family", list(FAMILIES))
def test_the_lr_of_each_group_per_epoch_follows_the_schedule(find_trainer, family):
    backbone, tiny = FAMILIES[family]
    epochs = 40                     # warm-up: frozen 0-1 (5 % of 40), ramp 2-3 at 1/3 and 2/3, then the trainer's lr
    base_lr = poly_lr if backbone == "resenc" else cosine_recipe_lr
    multipliers = {
        "_warmup": lambda e: 0.0 if e < 2 else (e - 1) / 3 if e < 4 else 1.0,
        "_frozen": lambda e: 0.0,
        "_encoderlr1en1": lambda e: 0.1,
    }
    for suffix, multiplier in multipliers.items():
        trainer = make_trainer(find_trainer(tiny), schedule=suffix[1:], num_epochs=epochs)
        network, optimizer = trainer.network, trainer.optimizer
        encoder = {id(p) for p in export_tensors(network, backbone).values()}
        assert encoder and all(g["params"] for g in optimizer.param_groups)
        # every parameter once, each group wholly inside or outside what the export initialises
        assert sorted(id(p) for g in optimizer.param_groups for p in g["params"]) == \
            sorted(id(p) for p in network.parameters() if p.requires_grad or id(p) in encoder)
        inside = [all(id(p) in encoder for p in g["params"]) for g in optimizer.param_groups]
        assert inside == [any(id(p) in encoder for p in g["params"]) for g in optimizer.param_groups]
        assert {id(p) for g, i in zip(optimizer.param_groups, inside) if i for p in g["params"]} == encoder
        assert inside[0] is False                   # nnU-Net logs group 0's lr: the decoder's
        for epoch in list(range(8)) + [20, 39]:
            trainer.current_epoch = epoch
            trainer.on_train_epoch_start()          # nnU-Net's hook: steps the scheduler with current_epoch
            for group, is_encoder in zip(optimizer.param_groups, inside):
                expected = base_lr(epoch, epochs) * (multiplier(epoch) if is_encoder else 1.0)
                assert group["lr"] == pytest.approx(expected, rel=1e-12, abs=0.0), (suffix, epoch, is_encoder)
        assert trainer.logger.get_value("lrs", step=None)[-1] == pytest.approx(base_lr(39, epochs), rel=1e-12)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_the_encoder_is_bit_identical_after_frozen_epochs_and_moves_after_them(find_trainer, family):
    backbone, tiny = FAMILIES[family]
    trainer = make_trainer(find_trainer(tiny), schedule="warmup", num_epochs=40)    # frozen 0-1, ramp from 2
    encoder = export_tensors(trainer.network, backbone)
    start = {k: v.detach().clone() for k, v in trainer.network.state_dict().items()}
    for epoch in (0, 1):
        train_epoch(trainer, epoch)
    after_frozen = {k: v.detach().clone() for k, v in trainer.network.state_dict().items()}
    for key in encoder:
        assert torch.equal(after_frozen[key], start[key]), key
    moved = [k for k in start if k not in encoder and not torch.equal(after_frozen[k], start[k])]
    assert len(moved) > 10                          # the decoder trained meanwhile
    train_epoch(trainer, 2)                         # the ramp's first epoch
    state = trainer.network.state_dict()
    # every encoder tensor with a gradient moved (none reach conv biases before a norm, and, in nnU-Net's
    # residual blocks, whose last norm starts at 0, the block's convs: 68 of 224 ResEnc tensors learn here)
    learning = {k for k, p in encoder.items() if p.grad is not None and p.grad.abs().sum() > 0}
    assert len(learning) > 20
    assert learning <= {k for k in encoder if not torch.equal(state[k], after_frozen[k])}


@pytest.mark.parametrize("family", ["nnUNetTrainerMiM", "nnUNetTrainerMiMResEnc"])    # AdamW and SGD
def test_a_frozen_encoder_gets_no_gradient_and_never_moves(find_trainer, family):
    backbone, tiny = FAMILIES[family]
    trainer = make_trainer(find_trainer(tiny), schedule="frozen", num_epochs=3)
    encoder = export_tensors(trainer.network, backbone)
    start = {k: v.detach().clone() for k, v in trainer.network.state_dict().items()}
    for epoch in range(3):
        train_epoch(trainer, epoch)
    state = trainer.network.state_dict()
    for key, param in encoder.items():
        assert torch.equal(state[key], start[key]) and param.grad is None and not param.requires_grad, key
    assert sum(not torch.equal(state[k], start[k]) for k in start if k not in encoder) > 10


@pytest.mark.parametrize("family", ["nnUNetTrainerMiM", "nnUNetTrainerMiMResEnc"])
def test_continue_resumes_in_the_right_phase_with_the_same_weights(find_trainer, family, tmp_path):
    """--c from a checkpoint of the last frozen epoch: the same lrs and weights as a run that never stopped."""
    backbone, tiny = FAMILIES[family]
    cls = find_trainer(tiny)
    whole = make_trainer(cls, schedule="warmup", num_epochs=40)
    for epoch in range(4):
        train_epoch(whole, epoch)
    first = make_trainer(cls, schedule="warmup", num_epochs=40)
    for epoch in range(2):
        train_epoch(first, epoch)
    first.save_checkpoint(str(tmp_path / "checkpoint_latest.pth"))          # nnU-Net's, as on_epoch_end does
    resumed = make_trainer(cls, schedule="warmup", num_epochs=40)
    resumed.load_checkpoint(str(tmp_path / "checkpoint_latest.pth"))        # what --c calls
    assert resumed.current_epoch == 2
    for epoch in (2, 3):
        train_epoch(resumed, epoch)
    assert [g["lr"] for g in resumed.optimizer.param_groups] == [g["lr"] for g in whole.optimizer.param_groups]
    reference = whole.network.state_dict()
    for key, value in resumed.network.state_dict().items():
        assert torch.equal(value, reference[key]), key


def test_the_environment_scale_applies_to_every_mim_trainer_and_bad_values_are_one_line(find_trainer, monkeypatch,
                                                                                         capsys):
    monkeypatch.setenv(ENCODER_LR_SCALE_ENV, "0.25")
    for backbone, tiny in FAMILIES.values():
        trainer = make_trainer(find_trainer(tiny), num_epochs=10)
        encoder = {id(p) for p in export_tensors(trainer.network, backbone).values()}
        trainer.current_epoch = 5
        trainer.on_train_epoch_start()
        lrs = {bool(encoder & {id(p) for p in g["params"]}): g["lr"] for g in trainer.optimizer.param_groups}
        assert lrs[True] == pytest.approx(0.25 * lrs[False], rel=1e-12), tiny
    for bad in ("0", "-1", "fast"):
        monkeypatch.setenv(ENCODER_LR_SCALE_ENV, bad)
        with pytest.raises(PlansError, match=f"MIM_ENCODER_LR_SCALE='{bad}': not a positive number"):
            encoder_lr_scale_from_environment()
        capsys.readouterr()
        with pytest.raises(SystemExit) as stopped:          # inside nnUNetv2_train: one line, exit status 2
            make_trainer(find_trainer("nnUNetTrainerMiM_tiny_1epoch"))
        assert stopped.value.code == 2
        assert capsys.readouterr().err.strip().splitlines() == [
            f"nnUNetTrainerMiM_tiny_1epoch: error: ${ENCODER_LR_SCALE_ENV}={bad!r}: not a positive number (a frozen "
            f"encoder is the _frozen trainer variant)"]


def test_without_a_schedule_the_trainers_keep_their_own_optimizer(find_trainer):
    # nnU-Net's SGD over one group for ResEnc, the recipe's two AdamW groups (decay / no decay) for MiMUNETR:
    # the optimizer state of checkpoints written before the schedules still loads with --c
    resenc = make_trainer(find_trainer("nnUNetTrainerMiMResEnc_tiny_1epoch"))
    assert isinstance(resenc.optimizer, torch.optim.SGD) and len(resenc.optimizer.param_groups) == 1
    mim = make_trainer(find_trainer("nnUNetTrainerMiM_tiny_1epoch"))
    assert isinstance(mim.optimizer, torch.optim.AdamW) and len(mim.optimizer.param_groups) == 2
    split = make_trainer(find_trainer("nnUNetTrainerMiM_tiny_1epoch"), schedule="encoderlr1en1")
    assert isinstance(split.optimizer, torch.optim.AdamW) and len(split.optimizer.param_groups) == 4
    assert [g["weight_decay"] for g in split.optimizer.param_groups] == [1e-5, 1e-5, 0.0, 0.0]
