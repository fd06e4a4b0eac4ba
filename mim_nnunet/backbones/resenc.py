"""The resenc backbone: the encoder of nnU-Net's residual-encoder U-Net, masked SimMIM-style.

**Architecture.** The encoder is ``dynamic_network_architectures``' ``ResidualEncoder`` built by nnU-Net's own
``get_network_from_plans`` from a plans-format architecture record (:func:`resenc_architecture`), so its
modules, arguments, initialisation and parameter names are those of the ``ResidualEncoderUNet`` that
``nnUNetv2_train`` builds. nnU-Net's ResEnc planners (``nnUNetPlannerResEncM``/``L``, nnunetv2 2.8) derive
the network from the patch size alone (``get_pool_and_conv_props``): on isotropic data every patch of
113 to 224 voxels per axis (padded to 128 .. 224) gives the same 6-stage encoder, and M (patch 128^3)
and L (patch 192^3) plan exactly that for any isotropic dataset at least that large. M and L differ in
patch and batch size, not in the network, so sizes ``M`` and ``L`` here are the same network, named
after the plans they pair with (:data:`RESENC_PLANNERS`); ``tests/backbones/test_resenc.py`` runs both
planners to prove the table.

**Stride 32.** Planned for a 96^3 patch the planner would stop at 5 stages (stride 16). We keep the 6th
(stride 32): every M/L plan whose patch reaches 113 voxels per axis has it (thick-slice CT gets a 7th),
and it holds 37 % of the encoder's parameters, which would otherwise be exported untrained. It is folded into the tokens: each token's feature is the
stride-16 stage output at the token, concatenated with the stride-32 output of the cell holding it
(nearest upsampling), each part normalised by a parameter-free LayerNorm so that both weigh alike;
``out_dim`` = the two stages' channels. Hence S must be a multiple of the total stride (32).

**Masking.** Every voxel of a masked 16^3 token is replaced at the input by a learnable value per input
channel (``mask_token``, shape ``(1, C, 1, 1, 1)``, zero at start: the [0, 1] CT scale's air), then the
whole volume runs densely through the stock encoder (SimMIM). Features at masked tokens are computed
too; the MAE decoder replaces them by its own mask token.

**What reaches a visible token** (tested in ``tests/backbones/test_resenc.py``):

1. Masked content never does: every output (visible and masked tokens) is a function of the visible
   voxels, the mask and the weights only; changing masked voxels leaves it bit-identical.
2. The mask does, everywhere. Convolutions carry the mask value from masked positions into visible
   tokens within the receptive field (:func:`receptive_field`): at M/L/tiny a stride-16 output voxel
   ``o`` is computed from input voxels ``16 o - 320 .. 16 o + 320`` and a stride-32 one from
   ``32 o - 688 .. 32 o + 688``, far more than any pre-training S, so no visible token is out of reach
   of every masked one. On top of that, instance norm normalises every channel by statistics of the
   whole volume (masked positions included): a global path, a mean and a variance per channel and layer.
   The hybrid backbone avoids this context shift by masking its convolutions; dense SimMIM masking
   accepts it, as SimMIM does for Swin.
"""

from __future__ import annotations

import copy
import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..mim.tokens import INPUT_MULTIPLE, TOKEN_SIZE, token_mask_to_grid

RESENC_UNET_CLASS_NAME = "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"

# What nnU-Net's ResEnc planners (ResEncUNetPlanner.get_plans_for_configuration) write for every 3D
# configuration besides the topology: plans format, dotted class names resolved by get_network_from_plans.
RESENC_FIXED_ARCH_KWARGS = {
    "conv_op": "torch.nn.modules.conv.Conv3d",
    "conv_bias": True,
    "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
    "norm_op_kwargs": {"eps": 1e-5, "affine": True},
    "dropout_op": None,
    "dropout_op_kwargs": None,
    "nonlin": "torch.nn.LeakyReLU",
    "nonlin_kwargs": {"inplace": True},
}
RESENC_KW_REQUIRES_IMPORT = ("conv_op", "norm_op", "dropout_op", "nonlin")
# The planners' UNet_blocks_per_stage_decoder: one conv block per decoder stage.
RESENC_DECODER_CONVS_PER_STAGE = 1

# Sizes. M and L: the network nnUNetPlannerResEncM/L plan for isotropic data (6 stages; features
# min(320, 32 * 2^s); blocks per stage from the planners' (1, 3, 4, 6, 6, 6, ...); 3^3 kernels; stride 2
# from stage 1 on). tiny: the same topology with features min(40, 4 * 2^s), for tests and CPUs. Decoder
# sizes are the MAE decoder's (hybrid base's for M/L, hybrid tiny's for tiny). use_checkpoint: activation
# checkpointing per stage (less memory, about a third more compute).
_ISOTROPIC_6_STAGES = {
    "n_blocks_per_stage": (1, 3, 4, 6, 6, 6),
    "kernel_sizes": ((3, 3, 3),) * 6,
    "strides": ((1, 1, 1),) + ((2, 2, 2),) * 5,
}
RESENC_SIZES = {
    "M": {"features_per_stage": (32, 64, 128, 256, 320, 320), **_ISOTROPIC_6_STAGES, "use_checkpoint": False,
          "decoder_dim": 576, "decoder_depth": 8, "decoder_heads": 16},
    "L": {"features_per_stage": (32, 64, 128, 256, 320, 320), **_ISOTROPIC_6_STAGES, "use_checkpoint": False,
          "decoder_dim": 576, "decoder_depth": 8, "decoder_heads": 16},
    "tiny": {"features_per_stage": (4, 8, 16, 32, 40, 40), **_ISOTROPIC_6_STAGES, "use_checkpoint": False,
             "decoder_dim": 144, "decoder_depth": 2, "decoder_heads": 4},
}
# Which stock nnU-Net planner (and so which plans identifier, -p) each size pairs with.
RESENC_PLANNERS = {"M": "nnUNetPlannerResEncM", "L": "nnUNetPlannerResEncL"}


def resenc_architecture(features_per_stage: Sequence[int], n_blocks_per_stage: Sequence[int],
                        kernel_sizes: Sequence[Sequence[int]], strides: Sequence[Sequence[int]]) -> Dict:
    """The plans-format architecture record (``network_class_name``, ``arch_kwargs``, ``_kw_requires_import``)
    of a 3D ResidualEncoderUNet with this topology and the ResEnc planners' fixed choices; JSON-able."""
    n = len(features_per_stage)
    if n < 2 or not len(n_blocks_per_stage) == len(kernel_sizes) == len(strides) == n:
        raise ValueError(f"features_per_stage, n_blocks_per_stage, kernel_sizes and strides need one entry per "
                         f"stage (at least 2), got {n}, {len(n_blocks_per_stage)}, {len(kernel_sizes)}, {len(strides)}")
    if any(len(k) != 3 for k in kernel_sizes) or any(len(s) != 3 for s in strides):
        raise ValueError("kernel_sizes and strides need 3 values per stage (3D)")
    arch_kwargs = {
        "n_stages": n,
        "features_per_stage": [int(f) for f in features_per_stage],
        "conv_op": RESENC_FIXED_ARCH_KWARGS["conv_op"],
        "kernel_sizes": [[int(k) for k in ks] for ks in kernel_sizes],
        "strides": [[int(s) for s in ss] for ss in strides],
        "n_blocks_per_stage": [int(b) for b in n_blocks_per_stage],
        "n_conv_per_stage_decoder": [RESENC_DECODER_CONVS_PER_STAGE] * (n - 1),
        **copy.deepcopy({k: v for k, v in RESENC_FIXED_ARCH_KWARGS.items() if k != "conv_op"}),
    }
    return {"network_class_name": RESENC_UNET_CLASS_NAME, "arch_kwargs": arch_kwargs,
            "_kw_requires_import": list(RESENC_KW_REQUIRES_IMPORT)}


def cumulative_strides(strides: Sequence[Sequence[int]]) -> List[Tuple[int, ...]]:
    """Per stage, the stage output's stride relative to the input, per axis."""
    total, out = [1] * len(strides[0]), []
    for s in strides:
        total = [t * int(v) for t, v in zip(total, s)]
        out.append(tuple(total))
    return out


Window = Tuple[int, int, int]     # (jump, lo, hi): output voxel o is computed from inputs jump*o+lo .. jump*o+hi


def _then(first: Window, second: Window) -> Window:
    """The window of ``second`` applied to the output of ``first``, relative to ``first``'s input."""
    j1, lo1, hi1 = first
    j2, lo2, hi2 = second
    return j1 * j2, j1 * lo2 + lo1, j1 * hi2 + hi1


def _conv(kernel: int, stride: int) -> Window:
    pad = (kernel - 1) // 2                     # dynamic_network_architectures' "same" padding
    return stride, -pad, kernel - 1 - pad


def receptive_field(kernel_sizes: Sequence[Sequence[int]], strides: Sequence[Sequence[int]],
                    n_blocks_per_stage: Sequence[int], stage: int) -> List[Window]:
    """Per axis ``(jump, lo, hi)``: voxel ``o`` of stage ``stage``'s output is computed, through the
    convolutions and pools of the stem and stages ``0..stage``, from input voxels ``jump*o+lo .. jump*o+hi``.

    Instance norm is left out: its statistics span the whole volume (see the module docstring). A
    residual block's window is the union of its main path (conv1 carries the stride, then conv2) and
    its skip (average pool with kernel = stride, when strided; a 1x1 projection adds nothing).
    """
    windows = []
    for axis in range(len(kernel_sizes[0])):
        rf = _conv(int(kernel_sizes[0][axis]), 1)                       # stem: one conv, stride 1
        for s in range(stage + 1):
            k = int(kernel_sizes[s][axis])
            for b in range(int(n_blocks_per_stage[s])):
                stride = int(strides[s][axis]) if b == 0 else 1
                main = _then(_conv(k, stride), _conv(k, 1))
                skip = (stride, 0, stride - 1)
                rf = _then(rf, (stride, min(main[1], skip[1]), max(main[2], skip[2])))
        windows.append(rf)
    return windows


def tensor_aliases(module: nn.Module) -> List[List[str]]:
    """``module``'s state-dict keys grouped by the tensor they name, in state-dict order.

    nnU-Net's conv blocks register each conv and norm twice (``convs.0.conv`` and ``convs.0.all_modules.0``),
    and ``UNetDecoder`` holds the encoder again (``decoder.encoder.*``): one tensor, several keys.
    """
    owner: Dict[str, int] = {}
    for name, tensor in list(module.named_parameters(remove_duplicate=False)) + \
            list(module.named_buffers(remove_duplicate=False)):
        owner[name] = id(tensor)
    groups: Dict[object, List[str]] = {}
    for key in module.state_dict(keep_vars=True):
        groups.setdefault(owner.get(key, key), []).append(key)
    return list(groups.values())


def unique_state(module: nn.Module) -> Dict[str, Tensor]:
    """``module``'s state with each tensor once, under its first key (``conv``/``norm``, not ``all_modules.N``)."""
    state = module.state_dict()
    return {group[0]: state[group[0]] for group in tensor_aliases(module)}


class ResEncEncoder(nn.Module):
    """Input ``(N, C, *S)`` and token mask ``(N, T)`` (True = masked) -> features ``(N, T, out_dim)``.

    ``self.encoder`` is the stock ``ResidualEncoder`` (keys ``encoder.stem.*``, ``encoder.stages.*`` as in
    ``ResidualEncoderUNet``); ``self.mask_token`` the learnable per-channel mask value (pre-training only).
    """

    def __init__(self, in_channels: int, input_size: Sequence[int], features_per_stage: Sequence[int],
                 n_blocks_per_stage: Sequence[int], kernel_sizes: Sequence[Sequence[int]],
                 strides: Sequence[Sequence[int]], use_checkpoint: bool = False):
        """
        Args:
            in_channels: C, input channels (1 for CT).
            input_size: S, the network input per axis; each a multiple of 32 and of the total stride.
            features_per_stage: output channels of each stage (the stem has the first stage's).
            n_blocks_per_stage: residual blocks (``BasicBlockD``) per stage.
            kernel_sizes: per stage, the conv kernel per axis.
            strides: per stage, the stride of its first block per axis (stage 0: 1); one stage must reach
                stride 16 (the token) on every axis; the stages after it are folded into the tokens.
            use_checkpoint: recompute each stage's activations in backward instead of storing them.
        """
        super().__init__()
        self.input_size = tuple(int(s) for s in input_size)
        if in_channels < 1:
            raise ValueError(f"resenc: in_channels must be >= 1, got {in_channels}")
        if len(self.input_size) != 3 or any(s <= 0 or s % INPUT_MULTIPLE for s in self.input_size):
            raise ValueError(f"resenc: input_size must be 3 positive multiples of {INPUT_MULTIPLE}, "
                             f"got {list(input_size)}")
        self.architecture = resenc_architecture(features_per_stage, n_blocks_per_stage, kernel_sizes, strides)
        arch = self.architecture["arch_kwargs"]
        totals = cumulative_strides(arch["strides"])
        tokens = [s for s, t in enumerate(totals) if t == (TOKEN_SIZE,) * 3]
        if not tokens:
            raise ValueError(f"resenc: no stage reaches stride {TOKEN_SIZE} on every axis (strides {arch['strides']})")
        self.token_stage = tokens[0]
        if any(s % t for s, t in zip(self.input_size, totals[-1])):
            raise ValueError(f"resenc: input_size {list(self.input_size)} is not divisible by the total stride "
                             f"{list(totals[-1])}")
        if math.prod(s // t for s, t in zip(self.input_size, totals[-1])) < 2:
            raise ValueError(f"resenc: input_size {list(self.input_size)} leaves the deepest stage one voxel, where "
                             f"instance norm cannot train; make one axis at least {2 * max(totals[-1])}")
        # Each folded stage's output voxel covers this many tokens per axis (nearest upsampling).
        self.fold = [tuple(t // TOKEN_SIZE for t in totals[s]) for s in range(self.token_stage, len(totals))]
        self.grid: Tuple[int, int, int] = tuple(s // TOKEN_SIZE for s in self.input_size)
        self.out_dim = sum(arch["features_per_stage"][self.token_stage:])
        self.in_channels = in_channels
        self.use_checkpoint = use_checkpoint
        # Built by nnU-Net's own builder, initialised as nnU-Net initialises (He; last norm of each block 0).
        network = get_network_from_plans(self.architecture["network_class_name"], arch,
                                         self.architecture["_kw_requires_import"], in_channels, 1,
                                         allow_init=True, deep_supervision=False)
        self.encoder = network.encoder
        self.mask_token = nn.Parameter(torch.zeros(1, in_channels, 1, 1, 1))

    def masked_input(self, x: Tensor, mask: Tensor) -> Tensor:
        """x ``(N, C, *S)`` with every voxel of a masked token set to the channel's mask value."""
        if x.ndim != 5 or x.shape[1] != self.in_channels or tuple(x.shape[2:]) != self.input_size:
            raise ValueError(f"resenc: expected input (N, {self.in_channels}, {', '.join(map(str, self.input_size))}), "
                             f"got {tuple(x.shape)}")
        if mask.shape != (x.shape[0], math.prod(self.grid)):
            raise ValueError(f"resenc: expected mask ({x.shape[0]}, {math.prod(self.grid)}), got {tuple(mask.shape)}")
        hidden = token_mask_to_grid(mask, self.grid, TOKEN_SIZE).bool()                   # (N, 1, *S)
        return torch.where(hidden, self.mask_token.to(x.dtype), x)

    def _run(self, module: nn.Module, h: Tensor) -> Tensor:
        if self.use_checkpoint and torch.is_grad_enabled():
            return checkpoint(module, h, use_reentrant=False)
        return module(h)

    def stage_outputs(self, x: Tensor, mask: Tensor) -> List[Tensor]:
        """Every stage's output for the masked input: ``(N, features_per_stage[s], *S / stride_s)``."""
        h = self._run(self.encoder.stem, self.masked_input(x, mask))
        outputs = []
        for stage in self.encoder.stages:
            h = self._run(stage, h)
            outputs.append(h)
        return outputs

    def forward(self, x: Tensor, mask: Tensor, visible_tokens: Optional[int] = None) -> Tensor:
        """``visible_tokens``: unused (the convolutions run on the whole zero-masked input)."""
        parts = []
        for fold, out in zip(self.fold, self.stage_outputs(x, mask)[self.token_stage:]):
            for axis, r in enumerate(fold, start=2):
                out = out.repeat_interleave(r, dim=axis)                    # (N, F, *G), block-aligned
            out = out.flatten(2).transpose(1, 2)                            # (N, T, F), raster order
            parts.append(F.layer_norm(out, out.shape[-1:]))
        return torch.cat(parts, dim=-1)

    def export_state(self) -> Dict[str, Tensor]:
        """The stock encoder's tensors, each once, under ``ResidualEncoderUNet.encoder``'s keys (no prefix)."""
        return unique_state(self.encoder)

    def export_record(self) -> Dict:
        """What an export's record must carry to rebuild the network: the plans-format architecture."""
        return {"architecture": copy.deepcopy(self.architecture), "token_stage": self.token_stage}

