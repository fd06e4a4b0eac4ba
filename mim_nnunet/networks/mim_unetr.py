"""MiMUNETR: the hybrid encoder as the MiM release fine-tunes it, under ``backbone.``, with a
SwinUNETR-style decoder of MONAI blocks (MIM_SPEC.md section 4).

Backbone additions of the release's fine-tuning encoder: layer scale ``gamma_1``/``gamma_2`` (init 1)
and a relative position bias table (init 0) in every ``blocks4`` block, drop-path, a learnable
position embedding (initialised from the pre-trained one, interpolated when the grid differs) and an
extra stride-2 stage ``fpn`` (Conv3d c4 -> 2 c4, BatchNorm). Parameter names equal the release's
(``spec/official_mim_keys.json``, ``finetune_encoder``).
"""

from __future__ import annotations

from typing import List, Mapping, Sequence, Tuple

import torch
import torch.nn.functional as F
from monai.networks.blocks import UnetOutBlock, UnetrBasicBlock, UnetrUpBlock
from torch import Tensor, nn

from ..backbones.hybrid import MaskedConvBlock, PatchEmbed
from ..backbones.layers import Mlp, init_weights
from ..defaults import HYBRID_SIZES, MIMUNETR_ARCH_KWARGS, TOKEN_SIZE

MIMUNETR_CLASS_NAME = "mim_nnunet.networks.MiMUNETR"
# Parameters the release adds for fine-tuning: never in a pre-trained export, initialised here.
FINETUNE_ONLY_PARTS = ("gamma_1", "gamma_2", "relative_position_bias_table", "relative_position_index", "fpn.")


def relative_position_index(grid: Sequence[int]) -> Tensor:
    """``(T, T)`` index into a ``(2Gx-1)(2Gy-1)(2Gz-1)`` table of the offset between two tokens."""
    coords = torch.stack(torch.meshgrid(*[torch.arange(g) for g in grid], indexing="ij")).flatten(1)   # (3, T)
    rel = coords[:, :, None] - coords[:, None, :]                                                      # (3, T, T)
    spans = [2 * g - 1 for g in grid]
    rel = rel + torch.tensor([g - 1 for g in grid]).view(3, 1, 1)
    return (rel[0] * spans[1] + rel[1]) * spans[2] + rel[2]


class RelPosAttention(nn.Module):
    """Self-attention over all tokens with a learned relative position bias (SDPA)."""

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


class DropPath(nn.Module):
    """Stochastic depth: drop the residual branch per sample while training."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = torch.rand(x.shape[0], *[1] * (x.ndim - 1), device=x.device, dtype=x.dtype) >= self.p
        return x * keep / (1.0 - self.p)


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


class MiMFinetuneEncoder(nn.Module):
    """``(B, C, *S)`` -> features at S/2, S/4, S/8 (conv stages), S/16 (tokens) and S/32 (``fpn``)."""

    def __init__(self, in_channels: int, img_size: Sequence[int], channels: Sequence[int], depths: Sequence[int],
                 heads: int, mlp_ratio: float, conv_kernel: int, drop_path_rate: float):
        super().__init__()
        c1, c2, c3, c4 = channels
        self.grid: Tuple[int, int, int] = tuple(s // TOKEN_SIZE for s in img_size)
        self.patch_embed1 = PatchEmbed(in_channels, c1)
        self.patch_embed2 = PatchEmbed(c1, c2)
        self.patch_embed3 = PatchEmbed(c2, c3)
        self.patch_embed4 = PatchEmbed(c3, c4)
        self.patch_embed5 = nn.Linear(c4, c4)
        tokens = self.grid[0] * self.grid[1] * self.grid[2]
        self.pos_embed = nn.Parameter(torch.zeros(1, tokens, c4))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.blocks1 = nn.ModuleList(MaskedConvBlock(c1, mlp_ratio, conv_kernel) for _ in range(depths[0]))
        self.blocks2 = nn.ModuleList(MaskedConvBlock(c2, mlp_ratio, conv_kernel) for _ in range(depths[1]))
        self.blocks3 = nn.ModuleList(MaskedConvBlock(c3, mlp_ratio, conv_kernel) for _ in range(depths[2]))
        rates = torch.linspace(0, drop_path_rate, depths[3]).tolist()
        self.blocks4 = nn.ModuleList(ScaledBlock(c4, heads, mlp_ratio, self.grid, r) for r in rates)
        self.fpn = nn.Sequential(nn.Conv3d(c4, 2 * c4, 2, stride=2), nn.BatchNorm3d(2 * c4), nn.GELU())
        init_weights(self)

    def forward(self, x: Tensor) -> List[Tensor]:
        feats = []
        for embed, blocks in ((self.patch_embed1, self.blocks1), (self.patch_embed2, self.blocks2),
                              (self.patch_embed3, self.blocks3)):
            x = embed(x)
            for blk in blocks:
                x = blk(x, 1.0)                                  # nothing is masked when fine-tuning
            feats.append(x)
        grid4 = self.patch_embed4(x)                                           # (B, c4, *G)
        tokens = self.patch_embed5(grid4.flatten(2).transpose(1, 2)) + self.pos_embed
        for blk in self.blocks4:
            tokens = blk(tokens)
        s4 = tokens.transpose(1, 2).reshape(grid4.shape)
        return feats + [s4, self.fpn(s4)]


class MiMUNETR(nn.Module):
    """Segmentation network: input ``(B, C, *img_size)`` (each axis a multiple of 32) -> logits
    ``(B, out_channels, *img_size)``.

    Args:
        in_channels: image channels C.
        out_channels: segmentation outputs (nnU-Net's heads).
        img_size: patch size; fixes the token grid (img_size / 16).
        size: hybrid size (``base``, ``tiny``), from ``HYBRID_SIZES``.
        feature_size: decoder width at full resolution (SwinUNETR's feature_size).
        drop_path_rate: stochastic depth of the last ``blocks4`` block (linear from 0).
        norm_name: decoder normalisation (MONAI name).
    """

    def __init__(self, in_channels: int, out_channels: int, img_size: Sequence[int], size: str = "base",
                 feature_size: int = MIMUNETR_ARCH_KWARGS["feature_size"],
                 drop_path_rate: float = MIMUNETR_ARCH_KWARGS["drop_path_rate"],
                 norm_name: str = MIMUNETR_ARCH_KWARGS["norm_name"]):
        super().__init__()
        if any(int(s) % (2 * TOKEN_SIZE) for s in img_size) or len(img_size) != 3:
            raise ValueError(f"MiMUNETR needs 3 axes, each a multiple of {2 * TOKEN_SIZE}; got {list(img_size)}")
        sizes = HYBRID_SIZES[size]
        c1, c2, c3, c4 = sizes["channels"]
        self.backbone = MiMFinetuneEncoder(in_channels, img_size, sizes["channels"], sizes["depths"], sizes["heads"],
                                           sizes["mlp_ratio"], sizes["conv_kernel"], drop_path_rate)
        fs = feature_size
        basic = dict(spatial_dims=3, kernel_size=3, stride=1, norm_name=norm_name, res_block=True)
        up = dict(spatial_dims=3, kernel_size=3, upsample_kernel_size=2, norm_name=norm_name, res_block=True)
        self.encoder0 = UnetrBasicBlock(in_channels=in_channels, out_channels=fs, **basic)
        self.encoder1 = UnetrBasicBlock(in_channels=c1, out_channels=fs, **basic)
        self.encoder2 = UnetrBasicBlock(in_channels=c2, out_channels=2 * fs, **basic)
        self.encoder3 = UnetrBasicBlock(in_channels=c3, out_channels=4 * fs, **basic)
        self.encoder4 = UnetrBasicBlock(in_channels=c4, out_channels=8 * fs, **basic)
        self.encoder5 = UnetrBasicBlock(in_channels=2 * c4, out_channels=16 * fs, **basic)
        self.decoder4 = UnetrUpBlock(in_channels=16 * fs, out_channels=8 * fs, **up)
        self.decoder3 = UnetrUpBlock(in_channels=8 * fs, out_channels=4 * fs, **up)
        self.decoder2 = UnetrUpBlock(in_channels=4 * fs, out_channels=2 * fs, **up)
        self.decoder1 = UnetrUpBlock(in_channels=2 * fs, out_channels=fs, **up)
        self.decoder0 = UnetrUpBlock(in_channels=fs, out_channels=fs, **up)
        self.out = UnetOutBlock(spatial_dims=3, in_channels=fs, out_channels=out_channels)

    def forward(self, x: Tensor) -> Tensor:
        s1, s2, s3, s4, s5 = self.backbone(x)
        d = self.encoder5(s5)
        d = self.decoder4(d, self.encoder4(s4))
        d = self.decoder3(d, self.encoder3(s3))
        d = self.decoder2(d, self.encoder2(s2))
        d = self.decoder1(d, self.encoder1(s1))
        d = self.decoder0(d, self.encoder0(x))
        return self.out(d)


def build_mimunetr(arch_kwargs: Mapping, num_input_channels: int, num_output_channels: int) -> nn.Module:
    """``MiMUNETR`` from the plans' ``arch_kwargs`` (``img_size`` is the patch size written by the trainer)."""
    unknown = set(arch_kwargs) - set(MIMUNETR_ARCH_KWARGS) - {"img_size"}
    if unknown:
        raise ValueError(f"unknown MiMUNETR arguments in the plans' arch_kwargs: {sorted(unknown)}")
    if "img_size" not in arch_kwargs:
        raise ValueError("MiMUNETR needs img_size (the patch size) in the plans' arch_kwargs")
    kwargs = {**MIMUNETR_ARCH_KWARGS, **arch_kwargs}
    return MiMUNETR(num_input_channels, num_output_channels, **kwargs)
