"""The MAE decoder and prediction head, shared by both backbones (names as the release)."""

from __future__ import annotations

from typing import Sequence, Tuple

import torch
from torch import Tensor, nn

from ..backbones.layers import Block, fixed_pos_embed, init_weights


class MAEDecoder(nn.Module):
    """Encoder features ``(N, T, in_dim)`` + mask ``(N, T)`` -> (prediction ``(N, T, out_dim)``,
    normalised decoder features ``(N, T, dim)``, used by the cross-level alignment)."""

    def __init__(self, in_dim: int, grid: Sequence[int], out_dim: int, decoder_dim: int, decoder_depth: int,
                 decoder_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.decoder_embed = nn.Linear(in_dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.decoder_pos_embed = fixed_pos_embed(grid, decoder_dim)
        self.decoder_blocks = nn.ModuleList(Block(decoder_dim, decoder_heads, mlp_ratio)
                                            for _ in range(decoder_depth))
        self.decoder_norm = nn.LayerNorm(decoder_dim, eps=1e-6)
        self.decoder_pred = nn.Linear(decoder_dim, out_dim)
        init_weights(self)
        nn.init.normal_(self.mask_token, std=0.02)

    def forward(self, features: Tensor, mask: Tensor) -> Tuple[Tensor, Tensor]:
        x = self.decoder_embed(features)
        x = torch.where(mask.unsqueeze(-1), self.mask_token.to(x.dtype), x) + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            x = blk(x)
        x = self.decoder_norm(x)
        return self.decoder_pred(x), x
