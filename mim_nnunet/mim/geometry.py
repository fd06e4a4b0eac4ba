"""Multi-level masked volumes (MIM_SPEC.md section 1). Knows nothing of backbones or losses.

From a batch of L1 crops (native size 2S):
- L1: the crop resized to S; 8 units (octants of the token grid) of which ``r1`` are masked.
- L2: ``gamma2`` masked (or visible) L1 units per crop, at native resolution (size S); tokens masked
  with ratio ``r2``.
- L3: ``gamma3`` masked (or visible) L2 tokens per L2 volume (16^3 native), upsampled to S; tokens
  masked with ratio ``r3``.
All selections are random draws from ``generator`` and vectorised over the batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .config import MiMConfig, num_masked
from .tokens import split_tokens, split_units, unit_token_mask


@dataclass
class Level:
    """One level's volumes, all fed to the network as one batch.

    inputs: ``(N, C, *S)`` network inputs.
    mask: ``(N, T)`` bool, True = masked (hidden from the encoder, reconstructed).
    parent: ``(N,)`` index of the volume of the previous level it was cut from (L1: its crop index).
    slot: ``(N,)`` which unit (L2) or token (L3) of the parent it was cut from (L1: -1).
    visible: tokens visible in each row of ``mask`` (the same in every row; known here, so the encoder
        need not count them on the device).
    """

    inputs: Tensor
    mask: Tensor
    parent: Tensor
    slot: Tensor
    visible: int


def random_mask(rows: int, count: int, n_true: int, generator: Optional[torch.Generator],
                device: torch.device) -> Tensor:
    """``(rows, count)`` bool with exactly ``n_true`` random True entries per row."""
    noise = torch.rand(rows, count, generator=generator, device=device)
    ranks = noise.argsort(dim=1).argsort(dim=1)
    return ranks < n_true


def pick(candidates: Tensor, k: int, generator: Optional[torch.Generator]) -> Tensor:
    """``(N, K)`` bool -> ``(N, k)`` indices of k distinct random True entries of each row."""
    noise = torch.rand(candidates.shape, generator=generator, device=candidates.device)
    noise = noise.masked_fill(~candidates, 2.0)            # never chosen while a True entry remains
    idx = noise.argsort(dim=1)[:, :k]
    if not bool(candidates.gather(1, idx).all()):
        raise ValueError(f"cannot pick {k} entries: a row has fewer candidates")
    return idx


def make_levels(crops: Tensor, config: MiMConfig, generator: Optional[torch.Generator] = None) -> List[Level]:
    """``crops``: ``(B, C, 2Sx, 2Sy, 2Sz)`` L1 crops -> ``config.levels`` :class:`Level` records."""
    b = crops.shape[0]
    if tuple(crops.shape[2:]) != config.l1_crop_size or crops.shape[1] != config.in_channels:
        raise ValueError(f"expected L1 crops of shape (B, {config.in_channels}, *{config.l1_crop_size}), "
                         f"got {tuple(crops.shape)}")
    device, grid, t = crops.device, config.grid, config.num_tokens
    from_masked = config.next_level_from == "masked"
    arange = torch.arange(b, device=device)

    unit_mask = random_mask(b, 8, num_masked(8, config.r1), generator, device)
    l1 = Level(inputs=F.interpolate(crops, size=config.input_size, mode="trilinear", align_corners=False),
               mask=unit_token_mask(unit_mask, grid), parent=arange, slot=torch.full_like(arange, -1),
               visible=t - num_masked(8, config.r1) * (t // 8))      # a unit is an octant: T / 8 tokens
    levels = [l1]
    if config.levels == 1:
        return levels

    units = pick(unit_mask if from_masked else ~unit_mask, config.gamma2, generator)    # (B, gamma2)
    n2 = b * config.gamma2
    l2 = Level(inputs=split_units(crops)[arange[:, None], units].reshape(n2, *crops.shape[1:2], *config.input_size),
               mask=random_mask(n2, t, num_masked(t, config.r2), generator, device),
               parent=arange.repeat_interleave(config.gamma2), slot=units.reshape(-1),
               visible=t - num_masked(t, config.r2))
    levels.append(l2)
    if config.levels == 2:
        return levels

    tokens = pick(l2.mask if from_masked else ~l2.mask, config.gamma3, generator)       # (N2, gamma3)
    n3 = n2 * config.gamma3
    native = split_tokens(l2.inputs)[torch.arange(n2, device=device)[:, None], tokens]  # (N2, g3, C, 16^3)
    native = native.reshape(n3, *native.shape[2:])
    l3 = Level(inputs=F.interpolate(native, size=config.input_size, mode="trilinear", align_corners=False),
               mask=random_mask(n3, t, num_masked(t, config.r3), generator, device),
               parent=torch.arange(n2, device=device).repeat_interleave(config.gamma3), slot=tokens.reshape(-1),
               visible=t - num_masked(t, config.r3))
    levels.append(l3)
    return levels
