"""Transformer pieces shared by the backbones and the MAE decoder (names as in timm/MAE)."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Attention(nn.Module):
    """Multi-head self-attention through ``scaled_dot_product_attention``."""

    def __init__(self, dim: int, heads: int, qkv_bias: bool = True):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        """``(N, L, D)`` -> ``(N, L, D)``."""
        n, length, d = x.shape
        qkv = self.qkv(x).reshape(n, length, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(out.transpose(1, 2).reshape(n, length, d))


class Block(nn.Module):
    """Pre-LN ViT block: x + attn(LN(x)); x + mlp(LN(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def sincos_pos_embed_3d(grid: Sequence[int], dim: int) -> Tensor:
    """Fixed 3D sine-cosine position embedding ``(1, Gx*Gy*Gz, dim)`` in raster token order.

    Each axis gets ``dim // 3`` channels (rounded down to even), half sines and half cosines of
    geometrically spaced frequencies; leftover channels are zero.
    """
    per_axis = (dim // 3) // 2 * 2
    if per_axis == 0:
        raise ValueError(f"dim {dim} too small for a 3D sin-cos embedding")
    freqs = 1.0 / (10000 ** (torch.arange(per_axis // 2, dtype=torch.float64) / (per_axis / 2)))
    coords = torch.meshgrid(*[torch.arange(g, dtype=torch.float64) for g in grid], indexing="ij")
    parts = []
    for c in coords:
        angles = c.reshape(-1, 1) * freqs[None]
        parts += [torch.sin(angles), torch.cos(angles)]
    emb = torch.cat(parts, dim=1)
    emb = F.pad(emb, (0, dim - emb.shape[1]))
    return emb.float().unsqueeze(0)


def fixed_pos_embed(grid: Sequence[int], dim: int) -> nn.Parameter:
    """A non-trainable parameter (so it is saved under the release's key) holding the sin-cos table."""
    return nn.Parameter(sincos_pos_embed_3d(grid, dim), requires_grad=False)


def init_weights(module: nn.Module) -> None:
    """MAE's initialisation: xavier-uniform linears and convs, zero linear biases, unit norms.

    Conv biases keep PyTorch's default (uniform, non-zero), as in MAE/ConvMAE: with zero biases, the
    exactly-zero air and padding of CT (-1000 HU -> 0) gives zero activations whose channel LayerNorms
    amplify the gradient 1/sqrt(eps) = 1000x each, about 1e32 at the stem after a few of them."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Conv3d):
            w = m.weight
            nn.init.xavier_uniform_(w.view(w.shape[0], -1))
