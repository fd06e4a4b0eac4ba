"""Changing what a mask hides, to prove that it stays hidden."""

import torch

from mim_nnunet.mim.tokens import TOKEN_SIZE, token_mask_to_grid


def masked_change(x, mask, grid):
    """x ``(N, C, *S)`` with every voxel inside masked tokens (``mask`` ``(N, T)``) replaced by other values."""
    hidden = token_mask_to_grid(mask, grid, TOKEN_SIZE).bool()
    return torch.where(hidden, torch.randn_like(x) * 100, x)
