"""MiMUNETR: the hybrid encoder as the MiM release fine-tunes it (:class:`HybridFinetuneEncoder`), under
``backbone.``, with a SwinUNETR-style decoder of MONAI blocks (MIM_SPEC.md section 4).

Parameter names of the backbone equal the release's (``spec/official_mim_keys.json``,
``finetune_encoder``).
"""

from __future__ import annotations

from typing import Mapping, Sequence

from monai.networks.blocks import UnetOutBlock, UnetrBasicBlock, UnetrUpBlock
from torch import Tensor, nn

from ..backbones.hybrid import HYBRID_SIZES, HybridFinetuneEncoder
from ..mim.tokens import TOKEN_SIZE

MIMUNETR_CLASS_NAME = "mim_nnunet.networks.MiMUNETR"
# The encoder's last stage (fpn) halves the token grid, so every patch axis is a multiple of 2 tokens.
MIMUNETR_PATCH_MULTIPLE = 2 * TOKEN_SIZE
# Arguments recorded in nnU-Net plans (arch_kwargs); img_size (the patch size) is added by the trainer.
# drop-path 0.2 as the release fine-tunes.
MIMUNETR_ARCH_KWARGS = {
    "size": "base",
    "feature_size": 48,
    "drop_path_rate": 0.2,
    "norm_name": "instance",
}


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
        if len(img_size) != 3 or any(int(s) % MIMUNETR_PATCH_MULTIPLE for s in img_size):
            raise ValueError(f"MiMUNETR needs 3 axes, each a multiple of {MIMUNETR_PATCH_MULTIPLE}; got {list(img_size)}")
        if size not in HYBRID_SIZES:
            raise ValueError(f"MiMUNETR: unknown hybrid size {size!r}; choose one of {sorted(HYBRID_SIZES)}")
        sizes = HYBRID_SIZES[size]
        c1, c2, c3, c4 = sizes["channels"]
        self.backbone = HybridFinetuneEncoder(in_channels, img_size, sizes["channels"], sizes["depths"],
                                              sizes["heads"], sizes["mlp_ratio"], sizes["conv_kernel"],
                                              drop_path_rate)
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
