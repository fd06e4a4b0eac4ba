"""The hybrid backbone: the authors' 3D ConvMAE-style encoder (MIM_SPEC.md 3.1).

Masked conv stages (stride 2, 4, 8), then a ViT on the visible stride-16 tokens only, with stage
skips added after the ViT. Parameter names and shapes equal the release (``official_mim_keys.json``).
Visible-token outputs depend only on visible input voxels: every stride-2 conv stays inside a token,
and the depth-wise conv only sees features multiplied by the visible mask.
"""

from __future__ import annotations

from typing import Sequence, Tuple

from torch import Tensor, nn

from ..defaults import TOKEN_SIZE
from ..patches import token_mask_to_grid
from .layers import Block, fixed_pos_embed, init_weights


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of ``(N, C, X, Y, Z)``."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.permute(0, 2, 3, 4, 1)).permute(0, 4, 1, 2, 3)


class PatchEmbed(nn.Module):
    """Conv3d k=2 s=2, LayerNorm over channels, GELU."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.proj = nn.Conv3d(in_ch, out_ch, kernel_size=2, stride=2)
        self.norm = ChannelLayerNorm(out_ch)
        self.act = nn.GELU()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.norm(self.proj(x)))


class ConvMlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Conv3d(dim, hidden, 1)
        self.act = nn.GELU()
        self.fc2 = nn.Conv3d(hidden, dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class MaskedConvBlock(nn.Module):
    """x + conv2(dwconv(conv1(LN(x)) * visible)); x + MLP(LN(x))."""

    def __init__(self, dim: int, mlp_ratio: float, kernel: int):
        super().__init__()
        self.norm1 = ChannelLayerNorm(dim)
        self.conv1 = nn.Conv3d(dim, dim, 1)
        self.attn = nn.Conv3d(dim, dim, kernel, padding=kernel // 2, groups=dim)
        self.conv2 = nn.Conv3d(dim, dim, 1)
        self.norm2 = ChannelLayerNorm(dim)
        self.mlp = ConvMlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, visible: Tensor) -> Tensor:
        """x ``(N, D, X, Y, Z)``; visible ``(N, 1, X, Y, Z)`` in {0, 1}."""
        x = x + self.conv2(self.attn(self.conv1(self.norm1(x)) * visible))
        return x + self.mlp(self.norm2(x))


class HybridEncoder(nn.Module):
    """Input ``(N, C, *S)`` and token mask ``(N, T)`` (True = masked) -> features ``(N, T, D)``.

    Rows of the mask must all hide the same number of tokens (true within a MiM level). Masked
    positions of the output are zero; they carry nothing about the masked input.
    """

    def __init__(self, in_channels: int, input_size: Sequence[int], channels: Sequence[int],
                 depths: Sequence[int], heads: int, mlp_ratio: float, conv_kernel: int):
        super().__init__()
        c1, c2, c3, c4 = channels
        self.grid: Tuple[int, int, int] = tuple(s // TOKEN_SIZE for s in input_size)
        self.out_dim = c4
        self.patch_embed1 = PatchEmbed(in_channels, c1)
        self.patch_embed2 = PatchEmbed(c1, c2)
        self.patch_embed3 = PatchEmbed(c2, c3)
        self.patch_embed4 = PatchEmbed(c3, c4)
        self.patch_embed5 = nn.Linear(c4, c4)
        self.pos_embed = fixed_pos_embed(self.grid, c4)
        self.blocks1 = nn.ModuleList(MaskedConvBlock(c1, mlp_ratio, conv_kernel) for _ in range(depths[0]))
        self.blocks2 = nn.ModuleList(MaskedConvBlock(c2, mlp_ratio, conv_kernel) for _ in range(depths[1]))
        self.blocks3 = nn.ModuleList(MaskedConvBlock(c3, mlp_ratio, conv_kernel) for _ in range(depths[2]))
        self.blocks4 = nn.ModuleList(Block(c4, heads, mlp_ratio) for _ in range(depths[3]))
        # stage skips: kernel = stride = the stage's voxels per token edge
        self.stage1_output_decode = nn.Conv3d(c1, c4, 8, stride=8)
        self.stage2_output_decode = nn.Conv3d(c2, c4, 4, stride=4)
        self.stage3_output_decode = nn.Conv3d(c3, c4, 2, stride=2)
        self.norm = nn.LayerNorm(c4, eps=1e-6)
        init_weights(self)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        n = x.shape[0]
        visible = ~mask
        n_vis = int(visible[0].sum())
        if not bool((visible.sum(dim=1) == n_vis).all()):
            raise ValueError("every row of the mask must hide the same number of tokens (one MiM level)")
        keep = visible.int().argsort(dim=1, descending=True, stable=True)[:, :n_vis]       # (N, n_vis)

        skips = 0
        for scale, embed, blocks, decode in ((8, self.patch_embed1, self.blocks1, self.stage1_output_decode),
                                             (4, self.patch_embed2, self.blocks2, self.stage2_output_decode),
                                             (2, self.patch_embed3, self.blocks3, self.stage3_output_decode)):
            x = embed(x)
            vis_grid = token_mask_to_grid(visible, self.grid, scale).to(x.dtype)
            for blk in blocks:
                x = blk(x, vis_grid)
            skips = skips + decode(x).flatten(2).transpose(1, 2)                        # (N, T, D)
        tokens = self.patch_embed5(self.patch_embed4(x).flatten(2).transpose(1, 2)) + self.pos_embed

        index = keep.unsqueeze(-1).expand(-1, -1, self.out_dim)
        h = tokens.gather(1, index)
        for blk in self.blocks4:
            h = blk(h)
        h = self.norm(h + skips.gather(1, index))
        return h.new_zeros(n, tokens.shape[1], self.out_dim).scatter(1, index, h)
