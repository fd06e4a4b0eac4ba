"""Tokens and units: cutting volumes into them and back. Token order is raster order over the token
grid (first axis outermost); unit order is the same over the 2x2x2 octants.

A token is ``TOKEN_SIZE``^3 voxels of the network input (docs/method.md); an L1 unit is one
octant of the token grid, so every axis of the input size S holds an even number of tokens:
``INPUT_MULTIPLE`` = 2 x ``TOKEN_SIZE``.
"""

from __future__ import annotations

from typing import Sequence, Tuple

from torch import Tensor

TOKEN_SIZE = 16                     # voxels per token edge at the network input
INPUT_MULTIPLE = 2 * TOKEN_SIZE     # S per axis: a whole number of units, each a whole number of tokens


def split_tokens(volumes: Tensor, token: int = TOKEN_SIZE) -> Tensor:
    """``(N, C, X, Y, Z)`` -> ``(N, T, C, token, token, token)``, T = (X/token)(Y/token)(Z/token)."""
    n, c, x, y, z = volumes.shape
    gx, gy, gz = x // token, y // token, z // token
    v = volumes.reshape(n, c, gx, token, gy, token, gz, token)
    return v.permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(n, gx * gy * gz, c, token, token, token)


def split_units(crops: Tensor) -> Tensor:
    """``(B, C, 2X, 2Y, 2Z)`` -> ``(B, 8, C, X, Y, Z)``: the 8 octants, unit = ux*4 + uy*2 + uz."""
    b, c, x2, y2, z2 = crops.shape
    x, y, z = x2 // 2, y2 // 2, z2 // 2
    v = crops.reshape(b, c, 2, x, 2, y, 2, z)
    return v.permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(b, 8, c, x, y, z)


def patchify(volumes: Tensor, token: int = TOKEN_SIZE) -> Tensor:
    """``(N, C, X, Y, Z)`` -> ``(N, T, token**3 * C)``, channels last inside a token (as MAE)."""
    t = split_tokens(volumes, token)                       # (N, T, C, p, p, p)
    return t.permute(0, 1, 3, 4, 5, 2).reshape(t.shape[0], t.shape[1], -1)


def unpatchify(tokens: Tensor, grid: Sequence[int], channels: int, token: int = TOKEN_SIZE) -> Tensor:
    """Inverse of :func:`patchify`: ``(N, T, token**3 * C)`` -> ``(N, C, X, Y, Z)``."""
    n = tokens.shape[0]
    gx, gy, gz = grid
    v = tokens.reshape(n, gx, gy, gz, token, token, token, channels)
    return v.permute(0, 7, 1, 4, 2, 5, 3, 6).reshape(n, channels, gx * token, gy * token, gz * token)


def unit_token_mask(unit_mask: Tensor, grid: Tuple[int, int, int]) -> Tensor:
    """``(B, 8)`` per-unit flags -> ``(B, T)`` per-token flags (each unit = G/2 tokens per axis)."""
    b = unit_mask.shape[0]
    m = unit_mask.reshape(b, 2, 2, 2)
    for axis, g in enumerate(grid, start=1):
        m = m.repeat_interleave(g // 2, dim=axis)
    return m.reshape(b, -1)


def token_mask_to_grid(mask: Tensor, grid: Tuple[int, int, int], scale: int) -> Tensor:
    """``(N, T)`` token flags -> ``(N, 1, Gx*scale, Gy*scale, Gz*scale)`` float, block-aligned."""
    m = mask.reshape(mask.shape[0], 1, *grid).float()
    for axis in (2, 3, 4):
        m = m.repeat_interleave(scale, dim=axis)
    return m


def unit_means(features: Tensor, grid: Tuple[int, int, int]) -> Tensor:
    """``(N, T, D)`` token features -> ``(N, 8, D)``: the mean of each unit's tokens."""
    n, _, d = features.shape
    gx, gy, gz = grid
    f = features.reshape(n, 2, gx // 2, 2, gy // 2, 2, gz // 2, d)
    return f.mean(dim=(2, 4, 6)).reshape(n, 8, d)
