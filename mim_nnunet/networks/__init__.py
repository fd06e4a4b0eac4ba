"""Segmentation networks our trainers build, looked up by the class name recorded in the plans.

MONAI is imported where a network is built, not when this package is: ``import monai`` loads all of MONAI
(about 3 s), which commands that only read these names and constants (plans-variant, recipe-plans) skip."""

from __future__ import annotations

from typing import Callable, Dict, Mapping

from torch import nn

from .mim_unetr import (
    MIMUNETR_ARCH_KWARGS,
    MIMUNETR_CLASS_NAME,
    MIMUNETR_PATCH_MULTIPLE,
    MiMUNETR,
    build_mimunetr,
)
from .swinunetr import (
    SWINUNETR_ARCH_KWARGS,
    SWINUNETR_CLASS_NAME,
    SWINUNETR_PATCH_MULTIPLE,
    build_swinunetr,
)

# plans' architecture["network_class_name"] -> builder(arch_kwargs, in_channels, out_channels)
BUILDERS: Dict[str, Callable[[Mapping, int, int], nn.Module]] = {
    SWINUNETR_CLASS_NAME: build_swinunetr,
    MIMUNETR_CLASS_NAME: build_mimunetr,
}


def build_network(network_class_name: str, arch_kwargs: Mapping, num_input_channels: int,
                  num_output_channels: int) -> nn.Module:
    """Build the network a plans' ``architecture`` record names (see :data:`BUILDERS`)."""
    try:
        builder = BUILDERS[network_class_name]
    except KeyError:
        raise ValueError(
            f"the plans name network {network_class_name!r}, which mim-nnunet does not build "
            f"(known: {sorted(BUILDERS)}); were these plans written by one of our trainers?"
        ) from None
    return builder(arch_kwargs, num_input_channels, num_output_channels)


__all__ = ["BUILDERS", "MIMUNETR_ARCH_KWARGS", "MIMUNETR_CLASS_NAME", "MIMUNETR_PATCH_MULTIPLE", "MiMUNETR",
           "SWINUNETR_ARCH_KWARGS", "SWINUNETR_CLASS_NAME", "SWINUNETR_PATCH_MULTIPLE", "build_mimunetr",
           "build_network", "build_swinunetr"]
