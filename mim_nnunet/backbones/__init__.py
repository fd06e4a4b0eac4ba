"""Backbones behind one interface: ``encoder(x, mask) -> (N, T, encoder.out_dim)``.

x is ``(N, C, *S)``; mask is ``(N, T)`` bool with True = masked. The output holds one feature per
token of the grid G = S/16; what sits at masked positions is ignored by the MAE decoder, which puts
its mask token there. The MiM model never looks inside.
"""

from __future__ import annotations

from typing import Sequence, Tuple

from torch import nn

from ..defaults import HYBRID_SIZES, SWIN_SIZES
from .hybrid import HybridEncoder
from .resenc import RESENC_SIZES, ResEncEncoder
from .swin import SwinEncoder

BACKBONES = ("hybrid", "swin", "resenc")
DECODER_KEYS = ("decoder_dim", "decoder_depth", "decoder_heads")


def backbone_sizes(backbone: str, size: str) -> dict:
    table = {"hybrid": HYBRID_SIZES, "swin": SWIN_SIZES, "resenc": RESENC_SIZES}.get(backbone)
    if table is None:
        raise ValueError(f"unknown backbone {backbone!r}; choose one of {BACKBONES}")
    if size not in table:
        raise ValueError(f"unknown size {size!r} for {backbone}; choose one of {sorted(table)}")
    return dict(table[size])


def build_encoder(backbone: str, size: str, in_channels: int, input_size: Sequence[int],
                  **overrides) -> Tuple[nn.Module, dict]:
    """The encoder and the decoder sizes that go with it (``decoder_dim``, ``_depth``, ``_heads``).

    ``overrides`` replace entries of the size table (e.g. ``use_checkpoint=True`` for swin)."""
    sizes = backbone_sizes(backbone, size)
    unknown = set(overrides) - set(sizes)
    if unknown:
        raise ValueError(f"unknown {backbone} size entries {sorted(unknown)}; known: {sorted(sizes)}")
    sizes.update(overrides)
    decoder = {k: sizes.pop(k) for k in DECODER_KEYS}
    cls = {"hybrid": HybridEncoder, "swin": SwinEncoder, "resenc": ResEncEncoder}[backbone]
    return cls(in_channels=in_channels, input_size=input_size, **sizes), decoder


__all__ = ["BACKBONES", "HybridEncoder", "ResEncEncoder", "SwinEncoder", "backbone_sizes", "build_encoder"]
