"""The hybrid backbone: the authors' 3D ConvMAE-style encoder (MIM_SPEC.md 3.1), as pre-trained and as
fine-tuned.

Masked conv stages (stride 2, 4, 8), then a ViT on the stride-16 tokens, with stage skips added after
the ViT. Parameter names and shapes equal the release (``official_mim_keys.json``): the conv stages are
built once (:class:`HybridConvStages`) and shared by

- :class:`HybridEncoder` (pre-training): ViT on the visible tokens only, fixed sin-cos position
  embedding, stage skips ``stage*_output_decode``. Visible-token outputs depend only on visible input
  voxels: every stride-2 conv stays inside a token, and the depth-wise conv only sees features
  multiplied by the visible mask.
- :class:`HybridFinetuneEncoder` (fine-tuning, as the release's ``ConvViT3dUNETR`` backbone): layer
  scale and relative position bias in every ViT block, drop-path, a learnable position embedding and an
  extra stride-32 stage ``fpn``; it returns the feature maps of every stride.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..mim.tokens import TOKEN_SIZE, token_mask_to_grid
from .layers import (
    Block,
    DropPath,
    ScaledBlock,
    fixed_pos_embed,
    init_finetune_weights,
    init_weights,
)

# Sizes: 'base' is the release; 'tiny' (channels / 4, 3 heads, a small decoder) is for tests and CPUs.
# decoder_* size the MAE decoder of pre-training (MIM_SPEC.md 3.1). use_checkpoint: activation
# checkpointing of every conv block and ViT block of pre-training (less memory, one more forward of each).
HYBRID_SIZES = {
    "base": {"channels": (48, 96, 192, 384), "depths": (2, 2, 2, 11), "heads": 12, "mlp_ratio": 4.0,
             "conv_kernel": 5, "use_checkpoint": False, "decoder_dim": 576, "decoder_depth": 8, "decoder_heads": 16},
    "tiny": {"channels": (12, 24, 48, 96), "depths": (2, 2, 2, 11), "heads": 3, "mlp_ratio": 4.0,
             "conv_kernel": 5, "use_checkpoint": False, "decoder_dim": 144, "decoder_depth": 2, "decoder_heads": 4},
}
CONV_STAGES = 3           # masked conv stages before the tokens (strides 2, 4, 8)
# Parameters the release adds for fine-tuning: never in a pre-trained export, initialised by the network.
FINETUNE_ONLY_PARTS = ("gamma_1", "gamma_2", "relative_position_bias_table", "relative_position_index", "fpn.")


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
    """x + conv2(dwconv(conv1(LN(x)) * visible)); x + MLP(LN(x)), each branch through drop-path."""

    def __init__(self, dim: int, mlp_ratio: float, kernel: int, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = ChannelLayerNorm(dim)
        self.conv1 = nn.Conv3d(dim, dim, 1)
        self.attn = nn.Conv3d(dim, dim, kernel, padding=kernel // 2, groups=dim)
        self.conv2 = nn.Conv3d(dim, dim, 1)
        self.norm2 = ChannelLayerNorm(dim)
        self.mlp = ConvMlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor, visible) -> Tensor:
        """x ``(N, D, X, Y, Z)``; visible ``(N, 1, X, Y, Z)`` in {0, 1}, or 1.0 when nothing is masked."""
        y = self.conv1(self.norm1(x)) * visible
        if y.device.type == "cpu":
            # the same convolution, channels-last in memory: PyTorch's CPU backward of a depthwise 5^3 conv is
            # 2-4x faster so (a MiMUNETR tiny training iteration at one thread, 64^3, batch 2: 1.70 -> 1.47 s;
            # the demo's pre-training step on two threads: unchanged)
            y = y.contiguous(memory_format=torch.channels_last_3d)
        x = x + self.drop_path(self.conv2(self.attn(y)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class HybridConvStages(nn.Module):
    """The release's conv part: ``patch_embed1..4`` (stride 2 each), ``blocks1..3`` (masked conv blocks)
    and ``patch_embed5`` (a linear on every stride-16 token). Subclasses add the ViT stage.

    Args:
        in_channels: image channels C.
        input_size: S, each axis a multiple of 32; fixes the token grid ``grid`` = S / 16.
        channels: (c1, c2, c3, c4) of the four stride-2 stages.
        depths: blocks per stage; the first three are conv stages, the last is the ViT's depth.
        mlp_ratio: hidden width of the MLPs relative to their input.
        conv_kernel: kernel of the depth-wise conv of the masked conv blocks.
        conv_drop_path: drop-path rate of each conv block, in order (default: none).
        use_checkpoint: recompute each block's activations in the backward pass instead of storing them
            (conv blocks here; subclasses' ViT blocks too): the same gradients for less memory.
    """

    def __init__(self, in_channels: int, input_size: Sequence[int], channels: Sequence[int], depths: Sequence[int],
                 mlp_ratio: float, conv_kernel: int, conv_drop_path: Optional[Sequence[float]] = None,
                 use_checkpoint: bool = False):
        super().__init__()
        self.use_checkpoint = use_checkpoint
        if len(channels) != CONV_STAGES + 1 or len(depths) != CONV_STAGES + 1:
            raise ValueError(f"channels and depths need {CONV_STAGES + 1} entries, got {channels}, {depths}")
        c1, c2, c3, c4 = channels
        self.grid: Tuple[int, int, int] = tuple(s // TOKEN_SIZE for s in input_size)
        self.out_dim = c4
        rates = list(conv_drop_path) if conv_drop_path is not None else [0.0] * sum(depths[:CONV_STAGES])
        self.patch_embed1 = PatchEmbed(in_channels, c1)
        self.patch_embed2 = PatchEmbed(c1, c2)
        self.patch_embed3 = PatchEmbed(c2, c3)
        self.patch_embed4 = PatchEmbed(c3, c4)
        self.patch_embed5 = nn.Linear(c4, c4)
        for stage, (dim, depth) in enumerate(zip(channels[:CONV_STAGES], depths[:CONV_STAGES]), start=1):
            mine, rates = rates[:depth], rates[depth:]
            setattr(self, f"blocks{stage}", nn.ModuleList(MaskedConvBlock(dim, mlp_ratio, conv_kernel, r)
                                                         for r in mine))

    def conv_stages(self, x: Tensor, visible: Optional[Tensor] = None) -> List[Tensor]:
        """``(N, C, *S)`` -> the three conv stages' outputs ``(N, c_k, *S / 2^k)``, k = 1..3.

        ``visible`` ``(N, T)`` bool token flags (True = visible) mask the depth-wise convs; None = all visible.
        """
        outputs = []
        for stage in range(1, CONV_STAGES + 1):
            x = getattr(self, f"patch_embed{stage}")(x)
            grid_mask = 1.0 if visible is None else \
                token_mask_to_grid(visible, self.grid, TOKEN_SIZE >> stage).to(x.dtype)
            for blk in getattr(self, f"blocks{stage}"):
                x = self.run_block(blk, x, grid_mask)
            outputs.append(x)
        return outputs

    def run_block(self, block: nn.Module, *args) -> Tensor:
        """``block(*args)``, checkpointed with ``use_checkpoint`` while gradients are recorded."""
        if self.use_checkpoint and torch.is_grad_enabled():
            return checkpoint(block, *args, use_reentrant=False)
        return block(*args)

    def tokens(self, stage3: Tensor) -> Tuple[Tensor, Tensor]:
        """The last conv stage's output -> (stride-16 grid ``(N, c4, *G)``, tokens ``(N, T, c4)`` after
        ``patch_embed5``; no position embedding yet)."""
        grid4 = self.patch_embed4(stage3)
        return grid4, self.patch_embed5(grid4.flatten(2).transpose(1, 2))


class HybridEncoder(HybridConvStages):
    """Pre-training encoder: input ``(N, C, *S)`` and token mask ``(N, T)`` (True = masked) -> features
    ``(N, T, c4)``.

    Rows of the mask must all hide the same number of tokens (true within a MiM level). Masked
    positions of the output are zero; they carry nothing about the masked input. Arguments as
    :class:`HybridConvStages` plus ``heads`` of the ViT; ``use_checkpoint`` covers the ViT blocks too.
    """

    def __init__(self, in_channels: int, input_size: Sequence[int], channels: Sequence[int],
                 depths: Sequence[int], heads: int, mlp_ratio: float, conv_kernel: int, use_checkpoint: bool = False):
        super().__init__(in_channels, input_size, channels, depths, mlp_ratio, conv_kernel,
                         use_checkpoint=use_checkpoint)
        c1, c2, c3, c4 = channels
        self.pos_embed = fixed_pos_embed(self.grid, c4)
        self.blocks4 = nn.ModuleList(Block(c4, heads, mlp_ratio) for _ in range(depths[3]))
        # stage skips: kernel = stride = the stage's voxels per token edge
        self.stage1_output_decode = nn.Conv3d(c1, c4, TOKEN_SIZE >> 1, stride=TOKEN_SIZE >> 1)
        self.stage2_output_decode = nn.Conv3d(c2, c4, TOKEN_SIZE >> 2, stride=TOKEN_SIZE >> 2)
        self.stage3_output_decode = nn.Conv3d(c3, c4, TOKEN_SIZE >> 3, stride=TOKEN_SIZE >> 3)
        self.norm = nn.LayerNorm(c4, eps=1e-6)
        init_weights(self)

    def forward(self, x: Tensor, mask: Tensor, visible_tokens: Optional[int] = None) -> Tensor:
        """``visible_tokens``: visible tokens per row when the caller knows them (MiM's levels do): then
        nothing waits for the GPU and a compiled encoder has no graph break here; None counts them."""
        n = x.shape[0]
        visible = ~mask
        if visible_tokens is None:         # counted on the host: two syncs, clear errors for direct calls
            n_vis = int(visible[0].sum())
            if not bool((visible.sum(dim=1) == n_vis).all()):
                raise ValueError("every row of the mask must hide the same number of tokens (one MiM level)")
        else:
            n_vis = int(visible_tokens)
            torch._assert_async(torch.all(visible.sum(dim=1) == n_vis),
                                f"every row of the mask must show {n_vis} tokens (one MiM level)")
        keep = visible.int().argsort(dim=1, descending=True, stable=True)[:, :n_vis]       # (N, n_vis)

        stages = self.conv_stages(x, visible)
        skips = sum(getattr(self, f"stage{k}_output_decode")(s).flatten(2).transpose(1, 2)
                    for k, s in enumerate(stages, start=1))                                 # (N, T, D)
        _, tokens = self.tokens(stages[-1])
        tokens = tokens + self.pos_embed

        index = keep.unsqueeze(-1).expand(-1, -1, self.out_dim)
        h = tokens.gather(1, index)
        for blk in self.blocks4:
            h = self.run_block(blk, h)
        h = self.norm(h + skips.gather(1, index))
        return h.new_zeros(n, tokens.shape[1], self.out_dim).scatter(1, index, h)


class HybridFinetuneEncoder(HybridConvStages):
    """Fine-tuning encoder (the release's): ``(B, C, *S)`` -> feature maps at S/2, S/4, S/8 (conv stages),
    S/16 (tokens on the grid, c4 channels) and S/32 (``fpn``, 2 c4 channels).

    Arguments as :class:`HybridEncoder` plus ``drop_path_rate``: stochastic depth of the last block, rising
    linearly from 0 over all blocks, conv and ViT (17 at base), as the release does. Initialised as the
    release fine-tunes (:func:`init_finetune_weights`); pre-trained weights then replace the encoder's.
    """

    def __init__(self, in_channels: int, input_size: Sequence[int], channels: Sequence[int], depths: Sequence[int],
                 heads: int, mlp_ratio: float, conv_kernel: int, drop_path_rate: float):
        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        conv_blocks = sum(depths[:CONV_STAGES])
        super().__init__(in_channels, input_size, channels, depths, mlp_ratio, conv_kernel, rates[:conv_blocks])
        c4 = channels[3]
        tokens = self.grid[0] * self.grid[1] * self.grid[2]
        self.pos_embed = nn.Parameter(torch.zeros(1, tokens, c4))
        self.blocks4 = nn.ModuleList(ScaledBlock(c4, heads, mlp_ratio, self.grid, r) for r in rates[conv_blocks:])
        self.fpn = nn.Sequential(nn.Conv3d(c4, 2 * c4, 2, stride=2), nn.BatchNorm3d(2 * c4), nn.GELU())
        init_finetune_weights(self, self.blocks4)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def forward(self, x: Tensor) -> List[Tensor]:
        feats = self.conv_stages(x)                                            # nothing is masked here
        grid4, tokens = self.tokens(feats[-1])                                 # (B, c4, *G), (B, T, c4)
        tokens = tokens + self.pos_embed
        for blk in self.blocks4:
            tokens = blk(tokens)
        s4 = tokens.transpose(1, 2).reshape(grid4.shape)
        return feats + [s4, self.fpn(s4)]
