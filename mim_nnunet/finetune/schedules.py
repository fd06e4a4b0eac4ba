"""Fine-tuning schedules of the pre-trained encoder: trainer variants that freeze it, warm it up, or give it its
own learning rate, on top of each trainer's own optimiser (AdamW, warm-up and cosine for MiMUNETR and SwinUNETR;
nnU-Net's SGD and poly for ResEnc). A variant in ``trainers/`` names one: ``schedule = "warmup"``.

The encoder is what a MiM export provides (:func:`mim_nnunet.weights.transfer.encoder_keys`); what the
fine-tuning network adds (the decoder; the hybrid's layer scales, relative position tables and ``fpn``) trains
like the decoder. An encoder parameter group's lr at epoch ``e`` is the trainer's own lr at ``e`` times

* ``0`` for ``e < K`` (frozen: the encoder's tensors do not change),
* ``scale * (e - K + 1) / (R + 1)`` for ``K <= e < K + R`` (the ramp; never 0, so its first epoch learns),
* ``scale`` after that,

with ``K``, ``R`` from the schedule's fractions of the run (:func:`phases_for`). It is a function of the
epoch alone: nnU-Net steps schedulers with ``step(current_epoch)``, so ``--c`` resumes in the right phase.
"""

from __future__ import annotations

import os
from typing import Dict, List, NamedTuple, Optional, Set

import torch
from torch import nn

from ..common.errors import PlansError

# Sets the encoder's lr relative to the rest for one run of any MiM trainer (nnUNetv2_train has no flag for it);
# it takes precedence over the schedule's scale.
ENCODER_LR_SCALE_ENV = "MIM_ENCODER_LR_SCALE"


class Schedule(NamedTuple):
    freeze_fraction: float = 0.0     # share of the epochs, from the first, with the encoder frozen; 1.0: all
    ramp_fraction: float = 0.0       # share of the epochs, after the frozen ones, over which its lr ramps up
    encoder_lr_scale: float = 1.0    # encoder lr relative to the rest once it trains


SCHEDULES: Dict[str, Schedule] = {
    # frozen for the first 5 % of the epochs (50 of 1000: the length of the MiM optimiser's own warm-up, in which
    # the decoder reaches its peak lr), then the encoder's lr rises over the next 5 % to the trainer's
    "warmup": Schedule(freeze_fraction=0.05, ramp_fraction=0.05),
    # never trained: only the decoder learns, a linear-probe-style measure of what the weights hold
    "frozen": Schedule(freeze_fraction=1.0),
    # the encoder at 0.1 x the lr throughout (nnU-Net's spelling of lr values in names: 1en1 = 1e-1)
    "encoderlr1en1": Schedule(encoder_lr_scale=0.1),
}


class EncoderPhases(NamedTuple):
    """A schedule resolved for a run of ``num_epochs``: ``frozen_epochs`` (K), ``ramp_epochs`` (R), ``scale``."""

    frozen_epochs: int
    ramp_epochs: int
    scale: float
    num_epochs: int

    @property
    def never_trained(self) -> bool:
        return self.frozen_epochs >= self.num_epochs

    def multiplier(self, epoch: int) -> float:
        """Encoder lr / the trainer's lr at ``epoch`` (0-based)."""
        if epoch < self.frozen_epochs:
            return 0.0
        if epoch < self.frozen_epochs + self.ramp_epochs:
            return self.scale * (epoch - self.frozen_epochs + 1) / (self.ramp_epochs + 1)
        return self.scale

    def phase(self, epoch: int) -> str:
        if epoch < self.frozen_epochs:
            return f"frozen ({epoch + 1} of {self.frozen_epochs} epochs)"
        if epoch < self.frozen_epochs + self.ramp_epochs:
            return f"ramp ({epoch - self.frozen_epochs + 1} of {self.ramp_epochs} epochs)"
        return "trained"


def phases_for(schedule: Schedule, num_epochs: int, scale: Optional[float] = None) -> EncoderPhases:
    """``schedule`` for a run of ``num_epochs``; ``scale`` replaces the schedule's encoder lr scale.

    A partial freeze keeps at least one frozen and one trained epoch (none in a 1-epoch run); a ramp lasts at
    least one epoch.
    """
    if schedule.freeze_fraction >= 1.0:
        frozen = num_epochs
    elif schedule.freeze_fraction > 0.0:
        frozen = min(max(1, round(schedule.freeze_fraction * num_epochs)), num_epochs - 1)
    else:
        frozen = 0
    ramp = max(1, round(schedule.ramp_fraction * num_epochs)) if schedule.ramp_fraction > 0.0 else 0
    return EncoderPhases(frozen, ramp, schedule.encoder_lr_scale if scale is None else scale, num_epochs)


def encoder_lr_scale_from_environment() -> Optional[float]:
    """``$MIM_ENCODER_LR_SCALE`` as a positive number (None: not set)."""
    value = os.environ.get(ENCODER_LR_SCALE_ENV)
    if value is None or value == "":
        return None
    try:
        scale = float(value)
    except ValueError:
        scale = -1.0
    if not scale > 0.0 or scale == float("inf"):
        raise PlansError(f"${ENCODER_LR_SCALE_ENV}={value!r}: not a positive number (a frozen encoder is the "
                         f"_frozen trainer variant)")
    return scale


def split_encoder_groups(optimizer: torch.optim.Optimizer, encoder: Set[int]) -> None:
    """Split each param group of a fresh optimizer (no step taken yet) in place into the parameters outside
    the encoder (first, so nnU-Net's lr log, which reads group 0, shows the decoder's) and those inside
    (``encoder``: parameter ids), marked ``group['encoder']``. Every other setting of a group is kept."""
    if optimizer.state:
        raise RuntimeError("split_encoder_groups needs an optimizer that has not stepped")
    groups, optimizer.param_groups = optimizer.param_groups, []
    for group in groups:
        for inside in (False, True):
            params = [p for p in group["params"] if (id(p) in encoder) == inside]
            if params:
                optimizer.add_param_group({**group, "params": params, "encoder": inside})


class EncoderScheduledLR:
    """The trainer's own lr scheduler (``inner``, stepped as nnU-Net steps it: ``step(current_epoch)``), with
    the encoder groups' lr multiplied by ``phases.multiplier(epoch)``. ``inner`` must set every group's lr
    afresh on each step (nnU-Net's ``PolyLRScheduler`` and our ``WarmupCosineLR`` do)."""

    def __init__(self, optimizer: torch.optim.Optimizer, inner, phases: EncoderPhases):
        self.optimizer, self.inner, self.phases = optimizer, inner, phases
        self.last_epoch = -1
        self.step(0)

    def step(self, current_epoch: Optional[int] = None):  # noqa: D401 - nnU-Net's calling convention
        epoch = self.last_epoch + 1 if current_epoch is None or current_epoch == -1 else current_epoch
        self.inner.step(epoch)
        factor = self.phases.multiplier(epoch)
        for group in self.optimizer.param_groups:
            if group.get("encoder"):
                group["lr"] = group["lr"] * factor
        self.last_epoch = epoch

    def get_last_lr(self) -> List[float]:
        return [group["lr"] for group in self.optimizer.param_groups]


def encoder_parameters(network: nn.Module, backbone: str) -> List[nn.Parameter]:
    """The parameters of ``network`` (unwrapped) that a MiM export of ``backbone`` initialises, each once."""
    from ..weights.transfer import encoder_keys       # weights.transfer imports the networks: load it late

    params = dict(network.named_parameters(remove_duplicate=False))
    return [params[k] for k in encoder_keys(network, backbone) if k in params]


class EncoderSchedule:
    """Mixin of the MiM trainers (before the trainer base): the encoder's schedule ``schedule`` (a name in
    :data:`SCHEDULES`; None: it trains like the rest, unless ``$MIM_ENCODER_LR_SCALE`` sets its lr).

    Hooks: ``configure_optimizers`` (nnU-Net calls it in ``initialize``, before ``--c`` loads the optimizer's
    state and before the DDP wrapper) splits the trainer's optimizer into encoder and other groups and wraps its
    lr scheduler; ``on_train_epoch_start`` logs the encoder's lr and phase. A frozen epoch is an lr of 0: the
    optimizer leaves those tensors bit-identical (its moments still follow the gradients, so the encoder starts
    the ramp with them), and DDP's reducer, built once over every parameter, stays valid when it thaws. An
    encoder that is never trained (``_frozen``) has no gradients at all (``requires_grad`` off before DDP),
    which saves its backward pass.
    """

    schedule: Optional[str] = None

    def encoder_phases(self) -> Optional[EncoderPhases]:
        """None when the encoder trains like the rest (the trainer's optimizer is then left untouched)."""
        scale = encoder_lr_scale_from_environment()
        if self.schedule is None:
            return None if scale is None or scale == 1.0 else phases_for(Schedule(), self.num_epochs, scale)
        return phases_for(SCHEDULES[self.schedule], self.num_epochs, scale)

    def configure_optimizers(self):
        optimizer, scheduler = super().configure_optimizers()
        try:
            phases = self.encoder_phases()
        except PlansError as exc:
            self.stop(str(exc))                 # RunGuards: one line, exit status 2
        if phases is None:
            return optimizer, scheduler
        network = getattr(self.network, "_orig_mod", self.network)       # torch.compile's wrapper
        encoder = encoder_parameters(network, self.backbone)
        split_encoder_groups(optimizer, {id(p) for p in encoder})
        if phases.never_trained:
            for p in encoder:
                p.requires_grad_(False)
        count = sum(p.numel() for p in encoder)
        self.print_to_log_file(
            f"encoder ({count:,} pre-trained parameters): {self.describe_schedule(phases)}"
            + (f" (${ENCODER_LR_SCALE_ENV})" if encoder_lr_scale_from_environment() is not None else ""))
        return optimizer, EncoderScheduledLR(optimizer, scheduler, phases)

    def describe_schedule(self, phases: EncoderPhases) -> str:
        if phases.never_trained:
            return "frozen for all epochs"
        parts = []
        if phases.frozen_epochs:
            parts.append(f"frozen for epochs 0-{phases.frozen_epochs - 1}")
        if phases.ramp_epochs:
            parts.append(f"lr ramped over the next {phases.ramp_epochs} epoch(s)")
        parts.append(f"then {phases.scale:g} x the lr of the rest")
        return ", ".join(parts)

    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        scheduler = self.lr_scheduler
        if isinstance(scheduler, EncoderScheduledLR):
            lr = next((g["lr"] for g in self.optimizer.param_groups if g.get("encoder")), None)
            self.print_to_log_file(f"encoder learning rate: {lr:.5g}, {scheduler.phases.phase(self.current_epoch)}")
