"""Optimisers: AdamW with weight decay only where it belongs."""

from __future__ import annotations

from typing import Iterable, List, Optional, Sequence

import torch
from torch import nn

from .defaults import NO_WEIGHT_DECAY_NAME_PARTS


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
                scaled_prefix: Optional[str] = None, lr_scale: float = 1.0) -> torch.optim.AdamW:
    """AdamW over :func:`decay_param_groups`; with ``scaled_prefix``, parameters whose name (inside
    DDP/compile wrappers) starts with it get ``lr_scale x lr`` (e.g. a pre-trained encoder)."""
    if scaled_prefix is None or lr_scale == 1.0:
        return torch.optim.AdamW(decay_param_groups(model, weight_decay), lr=lr, betas=tuple(betas))
    scaled = {id(p) for n, p in model.named_parameters()
              if n.replace("module.", "", 1).replace("_orig_mod.", "", 1).startswith(scaled_prefix)}
    groups = []
    for group in decay_param_groups(model, weight_decay):
        for inside, group_lr in ((True, lr * lr_scale), (False, lr)):
            params = [p for p in group["params"] if (id(p) in scaled) == inside]
            if params:
                groups.append({"params": params, "weight_decay": group["weight_decay"], "lr": group_lr})
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas))
