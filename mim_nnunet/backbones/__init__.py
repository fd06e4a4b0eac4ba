"""Backbones behind one interface: ``encoder(x, mask, visible_tokens=None) -> (N, T, encoder.out_dim)``.

x is ``(N, C, *S)``; mask is ``(N, T)`` bool with True = masked; ``visible_tokens`` (optional) the
visible tokens per row, which every row of a MiM level shares (a backbone that runs only the visible
tokens needs the count, and counting it on a GPU waits for the GPU). The output holds one feature per
token of the grid G = S/16; what sits at masked positions is ignored by the MAE decoder, which puts
its mask token there. The MiM model never looks inside. Each backbone's size table sits beside its
class; a pre-training plan carries the chosen entry (``backbone_sizes``), which is what a run builds.
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence, Tuple

from torch import nn

from .hybrid import HYBRID_SIZES, HybridEncoder
from .resenc import RESENC_SIZES, ResEncEncoder
from .swin import SWIN_SIZES, SwinEncoder

ENCODERS = {"hybrid": (HybridEncoder, HYBRID_SIZES), "swin": (SwinEncoder, SWIN_SIZES),
            "resenc": (ResEncEncoder, RESENC_SIZES)}
BACKBONES = tuple(ENCODERS)
DECODER_KEYS = ("decoder_dim", "decoder_depth", "decoder_heads")
CHECKPOINT_KEY = "use_checkpoint"   # every backbone's activation-checkpointing switch (size tables, plans)


def size_table(backbone: str) -> Mapping[str, dict]:
    if backbone not in ENCODERS:
        raise ValueError(f"unknown backbone {backbone!r}; choose one of {BACKBONES}")
    return ENCODERS[backbone][1]


def backbone_sizes(backbone: str, size: str) -> dict:
    """A copy of the size table's entry ``size`` of ``backbone`` (encoder and MAE-decoder sizes)."""
    table = size_table(backbone)
    if size not in table:
        raise ValueError(f"unknown size {size!r} for {backbone}; choose one of {sorted(table)}")
    return dict(table[size])


def build_encoder(backbone: str, size: str, in_channels: int, input_size: Sequence[int],
                  sizes: Optional[Mapping] = None, **overrides) -> Tuple[nn.Module, dict]:
    """The encoder and the decoder sizes that go with it (``decoder_dim``, ``_depth``, ``_heads``).

    ``sizes`` (e.g. a plan's ``backbone_sizes``) replaces the table entry of ``size``; ``overrides``
    replace single entries (e.g. ``use_checkpoint=True``: activation checkpointing)."""
    table = dict(sizes) if sizes is not None else backbone_sizes(backbone, size)
    table.setdefault(CHECKPOINT_KEY, False)     # hybrid plans and runs from before it could checkpoint
    known = backbone_sizes(backbone, next(iter(size_table(backbone))))
    unknown = (set(overrides) | set(table)) - set(known)
    missing = set(known) - set(table)
    if unknown or missing:
        raise ValueError(f"{backbone} sizes: unknown entries {sorted(unknown)}, missing {sorted(missing)}; "
                         f"expected {sorted(known)}")
    table.update(overrides)
    decoder = {k: table.pop(k) for k in DECODER_KEYS}
    return ENCODERS[backbone][0](in_channels=in_channels, input_size=input_size, **table), decoder


__all__ = ["BACKBONES", "HybridEncoder", "ResEncEncoder", "SwinEncoder", "backbone_sizes", "build_encoder", "size_table"]
