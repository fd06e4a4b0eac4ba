"""nnU-Net's own ResidualEncoderUNet from a resenc export: build it, and load the pre-trained encoder.

A resenc export holds ``ResidualEncoderUNet.encoder``'s tensors under that module's keys
(``stem.convs.0.conv.weight``, ``stages.3.blocks.5.conv2.norm.bias``, ...), each tensor once: nnU-Net's conv
blocks register every conv and norm a second time (``all_modules.N``) and ``UNetDecoder`` holds the encoder
again (``decoder.encoder.*``); safetensors stores no aliases. :func:`network_encoder_state` gives every
alias its tensor back, so the load is strict (every key, same shapes) and nothing is renamed. The record's
``architecture`` is in nnU-Net plans format, so the network is the one ``nnUNetv2_train`` builds.
"""

from __future__ import annotations

from typing import Dict, List, Mapping

from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from torch import Tensor, nn

from ..backbones.resenc import RESENC_UNET_CLASS_NAME, tensor_aliases
from ..weights.export import NETWORK_PREFIX

ENCODER_PREFIX = NETWORK_PREFIX["resenc"]     # where ResidualEncoderUNet holds the encoder an export fills


class ResEncLoadError(ValueError):
    """A resenc export that does not fit the network (missing or unexpected keys, other shapes)."""


def build_resenc_unet(architecture: Mapping, num_input_channels: int, num_output_channels: int,
                      deep_supervision: bool = True) -> nn.Module:
    """Stock ``ResidualEncoderUNet`` from a plans-format architecture record, as ``nnUNetv2_train`` builds it
    (``get_network_from_plans``, nnU-Net's initialisation). Input ``(B, C, *P)``, P divisible by the total
    stride; output ``(B, K, *P)`` logits, or a list of them per decoder resolution with ``deep_supervision``."""
    if architecture.get("network_class_name") != RESENC_UNET_CLASS_NAME:
        raise ResEncLoadError(f"not a ResidualEncoderUNet architecture: {architecture.get('network_class_name')!r}")
    return get_network_from_plans(architecture["network_class_name"], architecture["arch_kwargs"],
                                  architecture["_kw_requires_import"], num_input_channels, num_output_channels,
                                  allow_init=True, deep_supervision=deep_supervision)


def unique_encoder_keys(network: nn.Module) -> List[str]:
    """The network's encoder keys an export provides (with ``encoder.``), each tensor once."""
    return [ENCODER_PREFIX + group[0] for group in tensor_aliases(network.encoder)]


def network_encoder_state(encoder: nn.Module, state: Mapping[str, Tensor]) -> Dict[str, Tensor]:
    """``state`` (an export's tensors) as a full state dict of ``encoder`` (a ResidualEncoder): every alias
    key gets its group's tensor. Raises :class:`ResEncLoadError` naming missing, unexpected or misshapen keys."""
    groups = tensor_aliases(encoder)
    wanted = encoder.state_dict()
    missing = [g[0] for g in groups if g[0] not in state]
    known = {k for g in groups for k in g}
    unexpected = sorted(set(state) - known)
    shapes = [f"{g[0]} {list(state[g[0]].shape)} vs {list(wanted[g[0]].shape)}" for g in groups
              if g[0] in state and state[g[0]].shape != wanted[g[0]].shape]
    if missing or unexpected or shapes:
        raise ResEncLoadError(f"resenc export does not fit the network: {len(missing)} keys missing "
                              f"{missing[:3]}, {len(unexpected)} unexpected {unexpected[:3]}, "
                              f"{len(shapes)} with other shapes {shapes[:2]}")
    return {key: state[group[0]] for group in groups for key in group}


def load_encoder_state(network: nn.Module, state: Mapping[str, Tensor]) -> List[str]:
    """Load an export's tensors into ``network.encoder`` strictly (every key, same shapes); the decoder
    keeps its initialisation. Returns the network keys loaded, each tensor once (``encoder.`` + export key)."""
    network.encoder.load_state_dict(network_encoder_state(network.encoder, state), strict=True)
    return [ENCODER_PREFIX + k for k in state]
