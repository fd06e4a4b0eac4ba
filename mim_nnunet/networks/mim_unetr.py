"""MiMUNETR: the hybrid encoder as the MiM release fine-tunes it (:class:`HybridFinetuneEncoder`), under
``backbone.``, with MONAI SwinUNETR's decoder unchanged (docs/method.md), as the release's
``ConvViT3dUNETR`` builds it:

- the five feature maps (strides 2, 4, 8: the conv stages; 16: the ViT tokens on their grid; 32: ``fpn``)
  pass through a parameter-free LayerNorm over channels (SwinUNETR's ``normalize=True``);
- the decoder modules are SwinUNETR's own (``encoder1`` on the input, ``encoder2``-``encoder4`` on strides
  2-8, ``encoder10`` on stride 32, ``decoder5`` taking the stride-16 map directly as its skip,
  ``decoder4``-``decoder1``, ``out``), taken from a SwinUNETR of the same ``feature_size``: at base
  (feature_size 48) and tiny (12) the hybrid's channels c1..c4, 2 c4 are exactly fs, 2fs, 4fs, 8fs, 16fs;
- drop-path rises linearly from 0 over all conv and ViT blocks; linears are truncated-normal (std 0.02)
  with the ViT blocks' depth rescale, convs keep PyTorch's default initialisation.

Parameter names of the backbone equal the release's (``tests/fixtures/official_mim_keys.json``, ``finetune_encoder``).
``layout="mim-nnunet-0.1"`` rebuilds the network of mim-nnunet 0.1.0 (its own decoder on raw features), so
model folders trained with it still predict; plans written since record ``layout="swinunetr"``.
"""

from __future__ import annotations

from typing import List, Mapping, Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from ..backbones.hybrid import HYBRID_SIZES, HybridFinetuneEncoder
from ..mim.tokens import TOKEN_SIZE

MIMUNETR_CLASS_NAME = "mim_nnunet.networks.MiMUNETR"
# The encoder's last stage (fpn) halves the token grid, so every patch axis is a multiple of 2 tokens.
MIMUNETR_PATCH_MULTIPLE = 2 * TOKEN_SIZE
LAYOUTS = ("swinunetr", "mim-nnunet-0.1")
LEGACY_LAYOUT = "mim-nnunet-0.1"          # what plans without a layout (written by 0.1.0) describe
# Arguments recorded in nnU-Net plans (arch_kwargs); img_size (the patch size) is added by the trainer.
# drop-path 0.2 as the release fine-tunes.
MIMUNETR_ARCH_KWARGS = {
    "size": "base",
    "feature_size": 48,
    "drop_path_rate": 0.2,
    "norm_name": "instance",
    "layout": "swinunetr",
}
SWINUNETR_DECODER = ("encoder1", "encoder2", "encoder3", "encoder4", "encoder10", "decoder5", "decoder4",
                     "decoder3", "decoder2", "decoder1", "out")


def channel_layer_norm(x: Tensor) -> Tensor:
    """Parameter-free LayerNorm over the channels of ``(B, C, X, Y, Z)`` (SwinUNETR's ``proj_out``)."""
    return F.layer_norm(x.movedim(1, -1), [x.shape[1]]).movedim(-1, 1)


class MiMUNETR(nn.Module):
    """Segmentation network: input ``(B, C, *img_size)`` (each axis a multiple of 32) -> logits
    ``(B, out_channels, *img_size)``.

    Args:
        in_channels: image channels C.
        out_channels: segmentation outputs (nnU-Net's heads).
        img_size: patch size; fixes the token grid (img_size / 16).
        size: hybrid size (``base``, ``tiny``), from ``HYBRID_SIZES``.
        feature_size: decoder width at full resolution (SwinUNETR's feature_size); the hybrid's channels
            must be (fs, 2fs, 4fs, 8fs) for SwinUNETR's decoder.
        drop_path_rate: stochastic depth of the last block, rising linearly from 0 over all 17 (base) blocks.
        norm_name: decoder normalisation (MONAI name).
        layout: ``swinunetr`` (the release's network) or ``mim-nnunet-0.1`` (the 0.1.0 network, for model
            folders trained with it).
    """

    def __init__(self, in_channels: int, out_channels: int, img_size: Sequence[int], size: str = "base",
                 feature_size: int = MIMUNETR_ARCH_KWARGS["feature_size"],
                 drop_path_rate: float = MIMUNETR_ARCH_KWARGS["drop_path_rate"],
                 norm_name: str = MIMUNETR_ARCH_KWARGS["norm_name"],
                 layout: str = MIMUNETR_ARCH_KWARGS["layout"]):
        super().__init__()
        if len(img_size) != 3 or any(int(s) % MIMUNETR_PATCH_MULTIPLE for s in img_size):
            raise ValueError(f"MiMUNETR needs 3 axes, each a multiple of {MIMUNETR_PATCH_MULTIPLE}; got {list(img_size)}")
        if size not in HYBRID_SIZES:
            raise ValueError(f"MiMUNETR: unknown hybrid size {size!r}; choose one of {sorted(HYBRID_SIZES)}")
        if layout not in LAYOUTS:
            raise ValueError(f"MiMUNETR: unknown layout {layout!r}; choose one of {LAYOUTS}")
        sizes = HYBRID_SIZES[size]
        channels = list(sizes["channels"])
        self.layout = layout
        legacy = layout == LEGACY_LAYOUT
        self.backbone = HybridFinetuneEncoder(in_channels, img_size, channels, sizes["depths"], sizes["heads"],
                                              sizes["mlp_ratio"], sizes["conv_kernel"], drop_path_rate)
        if legacy:
            self._build_legacy_decoder(in_channels, out_channels, channels, feature_size, norm_name)
            return
        fs = feature_size
        if channels != [fs, 2 * fs, 4 * fs, 8 * fs]:
            raise ValueError(f"MiMUNETR: SwinUNETR's decoder at feature_size {fs} takes channels "
                             f"{[fs, 2 * fs, 4 * fs, 8 * fs]}, the hybrid '{size}' gives {channels}")
        # SwinUNETR's decoder modules themselves, so that names, shapes and arguments are MONAI's
        from monai.networks.nets import SwinUNETR
        reference = SwinUNETR(in_channels=in_channels, out_channels=out_channels, feature_size=fs,
                              norm_name=norm_name, spatial_dims=3)
        for name in SWINUNETR_DECODER:
            setattr(self, name, getattr(reference, name))

    def forward(self, x: Tensor) -> Tensor:
        if self.layout == LEGACY_LAYOUT:
            return self._legacy_forward(x)
        s1, s2, s3, s4, s5 = [channel_layer_norm(f) for f in self.backbone(x)]
        enc0, enc1, enc2, enc3 = self.encoder1(x), self.encoder2(s1), self.encoder3(s2), self.encoder4(s3)
        dec3 = self.decoder5(self.encoder10(s5), s4)
        dec2 = self.decoder4(dec3, enc3)
        dec1 = self.decoder3(dec2, enc2)
        dec0 = self.decoder2(dec1, enc1)
        return self.out(self.decoder1(dec0, enc0))

    # -- mim-nnunet 0.1.0: its own decoder on the raw feature maps (kept so its model folders predict) --
    def _build_legacy_decoder(self, in_channels: int, out_channels: int, channels: List[int], fs: int,
                              norm_name: str) -> None:
        from monai.networks.blocks import UnetOutBlock, UnetrBasicBlock, UnetrUpBlock
        c1, c2, c3, c4 = channels
        basic = dict(spatial_dims=3, kernel_size=3, stride=1, norm_name=norm_name, res_block=True)
        up = dict(spatial_dims=3, kernel_size=3, upsample_kernel_size=2, norm_name=norm_name, res_block=True)
        for name, cin, cout in (("encoder0", in_channels, fs), ("encoder1", c1, fs), ("encoder2", c2, 2 * fs),
                                ("encoder3", c3, 4 * fs), ("encoder4", c4, 8 * fs), ("encoder5", 2 * c4, 16 * fs)):
            setattr(self, name, UnetrBasicBlock(in_channels=cin, out_channels=cout, **basic))
        for name, cin, cout in (("decoder4", 16 * fs, 8 * fs), ("decoder3", 8 * fs, 4 * fs),
                                ("decoder2", 4 * fs, 2 * fs), ("decoder1", 2 * fs, fs), ("decoder0", fs, fs)):
            setattr(self, name, UnetrUpBlock(in_channels=cin, out_channels=cout, **up))
        self.out = UnetOutBlock(spatial_dims=3, in_channels=fs, out_channels=out_channels)

    def _legacy_forward(self, x: Tensor) -> Tensor:
        s1, s2, s3, s4, s5 = self.backbone(x)
        d = self.encoder5(s5)
        d = self.decoder4(d, self.encoder4(s4))
        d = self.decoder3(d, self.encoder3(s3))
        d = self.decoder2(d, self.encoder2(s2))
        d = self.decoder1(d, self.encoder1(s1))
        d = self.decoder0(d, self.encoder0(x))
        return self.out(d)


def build_mimunetr(arch_kwargs: Mapping, num_input_channels: int, num_output_channels: int) -> nn.Module:
    """``MiMUNETR`` from the plans' ``arch_kwargs`` (``img_size`` is the patch size written by the trainer;
    plans without ``layout`` were written by mim-nnunet 0.1.0 and get its network)."""
    unknown = set(arch_kwargs) - set(MIMUNETR_ARCH_KWARGS) - {"img_size"}
    if unknown:
        raise ValueError(f"unknown MiMUNETR arguments in the plans' arch_kwargs: {sorted(unknown)}")
    if "img_size" not in arch_kwargs:
        raise ValueError("MiMUNETR needs img_size (the patch size) in the plans' arch_kwargs")
    kwargs = {**MIMUNETR_ARCH_KWARGS, "layout": LEGACY_LAYOUT, **arch_kwargs}
    return MiMUNETR(num_input_channels, num_output_channels, **kwargs)
