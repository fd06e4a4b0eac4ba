"""Optimisation for both stages (pre-training and fine-tuning): AdamW with weight decay only where it
belongs, and the warm-up + cosine learning-rate schedule."""

from __future__ import annotations

import math
from typing import Iterable, List, Optional, Sequence

import torch
from torch import nn
from torch.optim.lr_scheduler import _LRScheduler

# Parameter names that never get weight decay, besides every 1-D tensor (norm weights, biases).
NO_WEIGHT_DECAY_NAME_PARTS = ("pos_embed", "position", "mask_token", "relative_position_bias_table")


def decay_param_groups(model: nn.Module, weight_decay: float,
                       no_decay_name_parts: Sequence[str] = NO_WEIGHT_DECAY_NAME_PARTS) -> List[dict]:
    """Split trainable parameters into a decayed group and a group with ``weight_decay = 0``.

    No decay for 1-D tensors (norm weights and biases) and for names containing any of
    ``no_decay_name_parts`` (position embeddings, mask tokens, relative position tables).
    """
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim <= 1 or any(part in name for part in no_decay_name_parts):
            no_decay.append(param)
        else:
            decay.append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_adamw(model: nn.Module, lr: float, weight_decay: float, betas: Iterable[float],
                fused: bool = False) -> torch.optim.AdamW:
    """AdamW over :func:`decay_param_groups`. ``fused``: PyTorch's fused kernel (one launch for all
    parameters; the same update up to float rounding). A pre-trained encoder's own lr in fine-tuning:
    :mod:`mim_nnunet.finetune.schedules`."""
    options = {"lr": lr, "betas": tuple(betas), **({"fused": True} if fused else {})}
    return torch.optim.AdamW(decay_param_groups(model, weight_decay), **options)


def warmup_cosine_factor(step: int, total_steps: int, warmup_steps: int) -> float:
    """Multiplier of the base learning rate at ``step`` (0-based) of ``total_steps``.

    Linear warm-up ``(step + 1) / (warmup_steps + 1)`` for ``step < warmup_steps`` (never 0, so the
    first step already learns), then a half cosine from 1 at ``step == warmup_steps`` towards 0 at
    ``step == total_steps``.
    """
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    if not 0 <= warmup_steps < total_steps:
        raise ValueError(f"warmup_steps must be in [0, {total_steps}), got {warmup_steps}")
    step = min(max(step, 0), total_steps)
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    progress = (step - warmup_steps) / (total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


class WarmupCosineLR(_LRScheduler):
    """Warm-up then cosine, stepped the way nnU-Net steps its schedulers: ``step(current_epoch)``.

    Each param group keeps its own base lr (``group['base_lr']``, set from its lr at construction), so
    groups with different learning rates (encoder/decoder, layer-wise) keep their ratios. Because the lr
    is a pure function of the step index, resuming at epoch k restores the schedule phase exactly.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int):
        self.total_steps = total_steps
        self.warmup_steps = warmup_steps
        for group in optimizer.param_groups:
            group.setdefault("base_lr", group["lr"])
        self._counter = 0
        super().__init__(optimizer, last_epoch=-1)

    def get_lr(self):
        factor = warmup_cosine_factor(max(self.last_epoch, 0), self.total_steps, self.warmup_steps)
        return [group["base_lr"] * factor for group in self.optimizer.param_groups]

    def step(self, current_step: Optional[int] = None):  # noqa: D401 - nnU-Net's calling convention
        if current_step is None or current_step == -1:
            current_step = self._counter
            self._counter += 1
        else:
            self._counter = current_step + 1
        self.last_epoch = current_step
        for group, lr in zip(self.optimizer.param_groups, self.get_lr()):
            group["lr"] = lr
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]


def warmup_steps_for(total_steps: int, warmup_fraction: float) -> int:
    """Warm-up length as a fraction of the run, kept below ``total_steps``."""
    return min(int(round(total_steps * warmup_fraction)), total_steps - 1)
