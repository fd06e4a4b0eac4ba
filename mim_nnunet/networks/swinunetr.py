"""MONAI SwinUNETR built from the architecture record in nnU-Net plans."""

from __future__ import annotations

from typing import Mapping

from torch import nn

SWINUNETR_CLASS_NAME = "monai.networks.nets.SwinUNETR"
# SwinUNETR's five stride-2 stages need every axis of its input to be a multiple of 2**5.
SWINUNETR_PATCH_MULTIPLE = 2 ** 5
# MONAI SwinUNETR as the MiM paper fine-tunes it (feature_size 48 is the paper's "Swin-B" setting); the
# arguments recorded in nnU-Net plans (arch_kwargs).
SWINUNETR_ARCH_KWARGS = {
    "feature_size": 48,
    "depths": [2, 2, 2, 2],
    "num_heads": [3, 6, 12, 24],
    "window_size": 7,
    "norm_name": "instance",
    "drop_rate": 0.0,
    "attn_drop_rate": 0.0,
    "dropout_path_rate": 0.0,
    "use_checkpoint": False,
    "use_v2": False,
}


def build_swinunetr(arch_kwargs: Mapping, num_input_channels: int, num_output_channels: int) -> nn.Module:
    """``SwinUNETR(in_channels, out_channels, **arch_kwargs)`` for 3D input.

    Input ``(B, num_input_channels, X, Y, Z)`` with each of X, Y, Z a multiple of 32; output
    ``(B, num_output_channels, X, Y, Z)`` logits (one output: no deep supervision).
    """
    unknown = set(arch_kwargs) - set(SWINUNETR_ARCH_KWARGS)
    if unknown:
        raise ValueError(f"unknown SwinUNETR arguments in the plans' arch_kwargs: {sorted(unknown)}")
    kwargs = {**SWINUNETR_ARCH_KWARGS, **arch_kwargs}
    if kwargs["feature_size"] % 12 != 0:
        raise ValueError(f"SwinUNETR feature_size must be a multiple of 12, got {kwargs['feature_size']}")
    from monai.networks.nets import SwinUNETR   # on demand: importing MONAI costs seconds (networks/__init__.py)
    return SwinUNETR(in_channels=num_input_channels, out_channels=num_output_channels, spatial_dims=3, **kwargs)
