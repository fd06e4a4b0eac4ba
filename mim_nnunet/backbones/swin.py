"""The swin backbone: MONAI's SwinViT exactly as SwinUNETR builds it, masked SimMIM-style.

The patch-embedding output inside masked tokens is replaced by a learnable mask token, every
token is processed, and the stride-16 stage (8 x feature_size channels, grid G) is the output.
Its ``swinViT.*`` weights load strictly into ``SwinUNETR(...).swinViT``.
"""

from __future__ import annotations

import types
from typing import TYPE_CHECKING, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..mim.tokens import TOKEN_SIZE, token_mask_to_grid

if TYPE_CHECKING:
    from monai.networks.nets.swin_unetr import WindowAttention

# MONAI SwinViT as SwinUNETR builds it ('base' = feature_size 48, the paper's Swin-B setting); decoder_*
# size the MAE decoder. use_checkpoint is SwinUNETR's per-block activation checkpointing: less memory,
# about a third more compute.
SWIN_SIZES = {
    "base": {"feature_size": 48, "depths": (2, 2, 2, 2), "num_heads": (3, 6, 12, 24), "window_size": 7,
             "use_checkpoint": False, "decoder_dim": 576, "decoder_depth": 8, "decoder_heads": 16},
    "tiny": {"feature_size": 12, "depths": (2, 2, 2, 2), "num_heads": (3, 6, 12, 24), "window_size": 7,
             "use_checkpoint": False, "decoder_dim": 144, "decoder_depth": 2, "decoder_heads": 4},
}
# Largest window-attention matrix (elements) built at once while training; above it attention runs in
# checkpointed chunks of volumes (512 MB in fp32).
SWIN_ATTENTION_CHUNK_ELEMENTS = 2 ** 27


def sdpa_window_attention(self: WindowAttention, x: Tensor, mask: Optional[Tensor]) -> Tensor:
    """MONAI's ``WindowAttention.forward`` computed by ``scaled_dot_product_attention``, in training too.

    x: ``(B, n, C)`` windows of n tokens; mask: ``(nW, n, n)`` shifted-window mask or None. The window
    index is folded into the head axis so that the (relative-position bias + shift mask) table of shape
    ``(1, nW * heads, n, n)`` broadcasts over the batch: the ``(B, heads, n, n)`` attention matrix that
    MONAI's training path builds (10 GB for 21 volumes at S = 96) is never materialised at once.
    """
    b, n, c = x.shape
    heads = self.num_heads
    q, k, v = self.qkv(x).reshape(b, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)       # (B, h, n, d)
    index = self.relative_position_index[:n, :n].reshape(-1)
    bias = self.relative_position_bias_table[index].reshape(n, n, heads).permute(2, 0, 1)  # (h, n, n)
    windows = 1 if mask is None else mask.shape[0]
    table = bias.unsqueeze(0) if mask is None else bias.unsqueeze(0) + mask.unsqueeze(1)   # (nW, h, n, n)
    fold = (b // windows, windows * heads, n, c // heads)
    table = table.reshape(1, -1, n, n).to(q.dtype)
    dropout = self.attn_drop.p if self.training else 0.0

    def attend(q_: Tensor, k_: Tensor, v_: Tensor, table_: Tensor) -> Tensor:
        return F.scaled_dot_product_attention(q_, k_, v_, attn_mask=table_, dropout_p=dropout, scale=self.scale)

    q, k, v = q.reshape(fold), k.reshape(fold), v.reshape(fold)
    if torch.is_grad_enabled() and table.requires_grad and q.shape[0] * table.numel() > SWIN_ATTENTION_CHUNK_ELEMENTS:
        # The bias table's gradient makes every kernel keep the full attention matrix for backward;
        # recompute it chunk by chunk of volumes instead, so memory stays at one chunk's matrix.
        per_chunk = max(1, SWIN_ATTENTION_CHUNK_ELEMENTS // table.numel())
        out = torch.cat([checkpoint(attend, *chunk, table, use_reentrant=False)
                         for chunk in zip(q.split(per_chunk), k.split(per_chunk), v.split(per_chunk))])
    else:
        out = attend(q, k, v, table)
    out = out.reshape(b, heads, n, c // heads).transpose(1, 2).reshape(b, n, c)
    return self.proj_drop(self.proj(out))


class SwinEncoder(nn.Module):
    """Input ``(N, C, *S)`` and token mask ``(N, T)`` (True = masked) -> features ``(N, T, 8*feature_size)``."""

    def __init__(self, in_channels: int, input_size: Sequence[int], feature_size: int, depths: Sequence[int],
                 num_heads: Sequence[int], window_size: int, use_checkpoint: bool = False):
        # imported here: MONAI loads all of its submodules on import (seconds), which runs of the other
        # backbones and the command-line tools do not need
        from monai.networks.nets import SwinUNETR
        from monai.networks.nets.swin_unetr import WindowAttention

        super().__init__()
        self.grid = tuple(s // TOKEN_SIZE for s in input_size)
        # Built through SwinUNETR so that the module, its arguments and names are SwinUNETR's own.
        self.swinViT = SwinUNETR(in_channels=in_channels, out_channels=1, feature_size=feature_size,
                                 depths=depths, num_heads=num_heads, window_size=window_size,
                                 use_checkpoint=use_checkpoint, spatial_dims=3).swinViT
        for module in self.swinViT.modules():          # same weights and names, memory-lean attention
            if isinstance(module, WindowAttention):
                module.forward = types.MethodType(sdpa_window_attention, module)
        self.mask_token = nn.Parameter(torch.zeros(1, feature_size, 1, 1, 1))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.out_dim = 8 * feature_size

    def embed(self, x: Tensor, mask: Tensor) -> Tensor:
        """Patch embedding with masked tokens replaced: ``(N, feature_size, *S/2)``."""
        x0 = self.swinViT.patch_embed(x)
        hidden = token_mask_to_grid(mask, self.grid, TOKEN_SIZE // 2).bool()
        return torch.where(hidden, self.mask_token.to(x0.dtype), x0)

    def forward(self, x: Tensor, mask: Tensor, visible_tokens: Optional[int] = None) -> Tensor:
        """``visible_tokens``: unused (every token runs, masked ones as the mask token)."""
        vit = self.swinViT
        h = vit.pos_drop(self.embed(x, mask))
        for layers in (vit.layers1, vit.layers2, vit.layers3):   # stride 4, 8, 16 (layers4 unused)
            h = layers[0](h.contiguous())
        h = vit.proj_out(h, normalize=True)                         # (N, 8fs, *G)
        return h.flatten(2).transpose(1, 2)
