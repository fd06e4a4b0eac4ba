"""The swin backbone: MONAI's SwinViT exactly as SwinUNETR builds it, masked SimMIM-style.

The patch-embedding output inside masked tokens is replaced by a learnable mask token, every
token is processed, and the stride-16 stage (8 x feature_size channels, grid G) is the output.
Its ``swinViT.*`` weights load strictly into ``SwinUNETR(...).swinViT``.
"""

from __future__ import annotations

from typing import Sequence

import torch
from monai.networks.nets import SwinUNETR
from torch import Tensor, nn

from ..defaults import TOKEN_SIZE
from ..patches import token_mask_to_grid


class SwinEncoder(nn.Module):
    """Input ``(N, C, *S)`` and token mask ``(N, T)`` (True = masked) -> features ``(N, T, 8*feature_size)``."""

    def __init__(self, in_channels: int, input_size: Sequence[int], feature_size: int, depths: Sequence[int],
                 num_heads: Sequence[int], window_size: int):
        super().__init__()
        self.grid = tuple(s // TOKEN_SIZE for s in input_size)
        # Built through SwinUNETR so that the module, its arguments and names are SwinUNETR's own.
        self.swinViT = SwinUNETR(in_channels=in_channels, out_channels=1, feature_size=feature_size,
                                 depths=depths, num_heads=num_heads, window_size=window_size,
                                 spatial_dims=3).swinViT
        self.mask_token = nn.Parameter(torch.zeros(1, feature_size, 1, 1, 1))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.out_dim = 8 * feature_size

    def embed(self, x: Tensor, mask: Tensor) -> Tensor:
        """Patch embedding with masked tokens replaced: ``(N, feature_size, *S/2)``."""
        x0 = self.swinViT.patch_embed(x)
        hidden = token_mask_to_grid(mask, self.grid, TOKEN_SIZE // 2).bool()
        return torch.where(hidden, self.mask_token.to(x0.dtype), x0)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        vit = self.swinViT
        h = vit.pos_drop(self.embed(x, mask))
        for layers in (vit.layers1, vit.layers2, vit.layers3):   # stride 4, 8, 16 (layers4 unused)
            h = layers[0](h.contiguous())
        h = vit.proj_out(h, normalize=True)                         # (N, 8fs, *G)
        return h.flatten(2).transpose(1, 2)
