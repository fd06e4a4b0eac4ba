"""Learning-rate schedules shared by fine-tuning and pre-training."""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch.optim.lr_scheduler import _LRScheduler


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
