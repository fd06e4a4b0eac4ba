"""Transformer and regularisation pieces shared by the backbones, the fine-tuning encoders and the MAE
decoder (names as in timm/MAE and the MiM release)."""

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


class DropPath(nn.Module):
    """Stochastic depth: drop the residual branch per sample while training (identity at p = 0 or in eval)."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = torch.rand(x.shape[0], *[1] * (x.ndim - 1), device=x.device, dtype=x.dtype) >= self.p
        return x * keep / (1.0 - self.p)


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


def relative_position_index(grid: Sequence[int]) -> Tensor:
    """``(T, T)`` index into a ``(2Gx-1)(2Gy-1)(2Gz-1)`` table of the offset between two tokens."""
    coords = torch.stack(torch.meshgrid(*[torch.arange(g) for g in grid], indexing="ij")).flatten(1)   # (3, T)
    rel = coords[:, :, None] - coords[:, None, :]                                                      # (3, T, T)
    spans = [2 * g - 1 for g in grid]
    rel = rel + torch.tensor([g - 1 for g in grid]).view(3, 1, 1)
    return (rel[0] * spans[1] + rel[1]) * spans[2] + rel[2]


class RelPosAttention(nn.Module):
    """Self-attention over all tokens of a grid with a learned relative position bias (SDPA)."""

    def __init__(self, dim: int, heads: int, grid: Sequence[int]):
        super().__init__()
        self.heads = heads
        spans = [2 * g - 1 for g in grid]
        self.relative_position_bias_table = nn.Parameter(torch.zeros(spans[0] * spans[1] * spans[2], heads))
        self.register_buffer("relative_position_index", relative_position_index(grid))
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        """``(N, T, D)`` -> ``(N, T, D)``."""
        n, t, d = x.shape
        qkv = self.qkv(x).reshape(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        bias = self.relative_position_bias_table[self.relative_position_index].permute(2, 0, 1)   # (H, T, T)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=bias.unsqueeze(0).to(qkv.dtype))
        return self.proj(out.transpose(1, 2).reshape(n, t, d))


class ScaledBlock(nn.Module):
    """Pre-LN ViT block with layer scale and relative position bias: x + gamma_1 attn(LN x); x + gamma_2 mlp."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, grid: Sequence[int], drop_path: float):
        super().__init__()
        self.gamma_1 = nn.Parameter(torch.ones(dim))
        self.gamma_2 = nn.Parameter(torch.ones(dim))
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = RelPosAttention(dim, heads, grid)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path(self.gamma_1 * self.attn(self.norm1(x)))
        return x + self.drop_path(self.gamma_2 * self.mlp(self.norm2(x)))


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
    """MAE's initialisation of pre-training models: xavier-uniform linears, zero linear biases, unit norms.

    Convs keep PyTorch's default initialisation, as the MiM release does (weights and biases uniform, the
    biases non-zero: with zero biases, the exactly-zero air and padding of CT (-1000 HU -> 0) gives zero
    activations whose channel LayerNorms amplify the gradient 1/sqrt(eps) = 1000x each, about 1e32 at the
    stem after a few of them)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


VIT_INIT_STD = 0.02


def init_finetune_weights(module: nn.Module, blocks: Sequence[nn.Module]) -> None:
    """The release's fine-tuning initialisation (BEiT/timm style): truncated-normal (std 0.02) linears with
    zero biases, unit norms, convs at PyTorch's default; then each ViT block's output projections
    (``attn.proj``, ``mlp.fc2``) divided by sqrt(2 x its 1-based depth), so the residual stream does not
    grow with depth."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=VIT_INIT_STD)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    with torch.no_grad():
        for depth, block in enumerate(blocks, start=1):
            for weight in (block.attn.proj.weight, block.mlp.fc2.weight):
                weight.div_((2.0 * depth) ** 0.5)
