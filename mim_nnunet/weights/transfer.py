"""Pre-trained encoder -> segmentation network: map names, adapt shapes, load, and report.

An export's tensors go under ``backbone.`` (hybrid -> MiMUNETR), ``swinViT.`` (swin -> SwinUNETR) or
``encoder.`` (resenc -> nnU-Net's ResidualEncoderUNet, every alias of a tensor set alike).
Two adaptations are made and reported: the position embedding is interpolated when the patch's token
grid differs from the pre-training grid, and a 1-channel stem is inflated to C channels (repeated,
divided by C, so a C-channel copy of one image gives the same activations). Anything else that does
not fit is counted as not loaded; below ``MIN_ENCODER_FRACTION`` of the encoder the transfer fails.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch.nn.functional as F
from torch import Tensor, nn

from ..backbones import size_table
from ..backbones.hybrid import FINETUNE_ONLY_PARTS
from ..backbones.resenc import RESENC_UNET_CLASS_NAME, tensor_aliases
from ..common.errors import MimError
from ..common.hashing import tensor_sha1
from ..mim.tokens import TOKEN_SIZE
from ..networks.mim_unetr import MiMUNETR
from .export import NETWORK_PREFIX, STEM_KEY, network_key
from .finding import trainer_for

MIN_ENCODER_FRACTION = 0.99
SPACING_TOLERANCE = 0.25   # relative difference per axis above which the spacing mismatch is reported


class TransferError(MimError):
    """Weights that cannot initialise the network (wrong backbone, too few encoder parameters)."""


@dataclass
class TransferReport:
    """What happened to every parameter; ``rows`` per module: loaded / new / ignored parameter counts."""

    source: str
    backbone: str
    loaded: Dict[str, int] = field(default_factory=dict)       # network key -> numel
    new: Dict[str, int] = field(default_factory=dict)          # network key -> numel (kept at init)
    ignored: Dict[str, str] = field(default_factory=dict)      # export key -> why
    adapted: Dict[str, str] = field(default_factory=dict)      # network key -> how
    warnings: List[str] = field(default_factory=list)
    encoder_expected: int = 0
    digests: Dict[str, str] = field(default_factory=dict)      # network key -> sha1 of the loaded tensor

    @property
    def encoder_fraction(self) -> float:
        return sum(self.loaded.values()) / self.encoder_expected if self.encoder_expected else 0.0

    def rows(self) -> "OrderedDict[str, List[int]]":
        table: "OrderedDict[str, List[int]]" = OrderedDict()
        for keys, col in ((self.loaded, 0), (self.new, 1)):
            for k, n in keys.items():
                table.setdefault(module_of(k), [0, 0, 0])[col] += n
        for k in self.ignored:
            table.setdefault(module_of(network_key(self.backbone, k)), [0, 0, 0])[2] += 1
        return table

    def table(self) -> str:
        lines = [f"weights: {self.source} ({self.backbone})",
                 f"{'module':<34}{'loaded':>12}{'new':>12}{'ignored':>9}"]
        for module, (loaded, new, ignored) in self.rows().items():
            lines.append(f"{module:<34}{loaded:>12,}{new:>12,}{ignored:>9}")
        lines.append("(loaded/new: parameter counts; ignored: tensors of the export the network has no place for)")
        for key, how in self.adapted.items():
            lines.append(f"adapted {key}: {how}")
        lines.append(f"encoder: {100 * self.encoder_fraction:.2f}% of {self.encoder_expected:,} pre-trainable "
                     f"parameters loaded (at least {100 * MIN_ENCODER_FRACTION:.0f}% required)")
        lines += [f"WARNING: {w}" for w in self.warnings]
        return "\n".join(lines)

    def to_dict(self) -> Dict:
        return {"source": self.source, "backbone": self.backbone, "encoder_fraction": self.encoder_fraction,
                "encoder_expected": self.encoder_expected, "loaded": self.loaded, "new": self.new,
                "ignored": self.ignored, "adapted": self.adapted, "warnings": self.warnings,
                "digests": self.digests}


def module_of(key: str) -> str:
    """Table row of a parameter: ``backbone.blocks4`` / ``swinViT.layers1`` / ``decoder3``."""
    parts = key.split(".")
    encoders = {p.rstrip(".") for p in NETWORK_PREFIX.values()}
    return ".".join(parts[:2]) if parts[0] in encoders and len(parts) > 2 else parts[0]


def backbone_of(network: nn.Module) -> str:
    if isinstance(network, MiMUNETR):
        return "hybrid"
    if hasattr(network, "swinViT"):
        return "swin"
    if type(network).__name__ == RESENC_UNET_CLASS_NAME.rsplit(".", 1)[1]:
        return "resenc"
    raise TransferError(f"{type(network).__name__} has no MiM encoder (expected MiMUNETR, SwinUNETR or "
                        f"ResidualEncoderUNet)")


def interpolate_pos_embed(pos: Tensor, src_grid: Sequence[int], dst_grid: Sequence[int]) -> Tensor:
    """``(1, prod(src_grid), D)`` -> ``(1, prod(dst_grid), D)``, trilinear over the token grid."""
    d = pos.shape[-1]
    volume = pos.reshape(1, *src_grid, d).permute(0, 4, 1, 2, 3).float()
    out = F.interpolate(volume, size=tuple(dst_grid), mode="trilinear", align_corners=False)
    return out.permute(0, 2, 3, 4, 1).reshape(1, -1, d).to(pos.dtype)


def inflate_stem(weight: Tensor, channels: int) -> Tensor:
    """``(O, 1, *k)`` -> ``(O, C, *k)``: repeated and divided by C."""
    return weight.repeat(1, channels, *[1] * (weight.ndim - 2)) / channels


def aliases(network: nn.Module) -> Dict[str, List[str]]:
    """Each tensor's first state-dict key -> all its keys (nnU-Net's networks name one tensor several times:
    ``conv`` and ``all_modules.0``, ``encoder.*`` and ``decoder.encoder.*``; other networks: one key each)."""
    return {group[0]: group for group in tensor_aliases(network)}


def encoder_keys(network: nn.Module, backbone: str) -> List[str]:
    """Network keys a MiM export is expected to provide, each tensor once (the release's fine-tuning
    additions excluded)."""
    prefix = NETWORK_PREFIX[backbone]
    return [k for k in aliases(network) if k.startswith(prefix)
            and not (backbone == "hybrid" and any(part in k for part in FINETUNE_ONLY_PARTS))]


def size_of_width(backbone: str, width: int) -> Optional[str]:
    """The size of ``backbone`` whose first feature width (the stem's output channels) is ``width``."""
    first = {"hybrid": lambda sizes: sizes["channels"][0], "swin": lambda sizes: sizes["feature_size"],
             "resenc": lambda sizes: sizes["features_per_stage"][0]}[backbone]
    return next((name for name, sizes in size_table(backbone).items() if first(sizes) == width), None)


def check_size(network: nn.Module, state: Mapping[str, Tensor], record: Mapping, source: str, backbone: str,
               trainer: Optional[str] = None) -> None:
    """:class:`TransferError` naming both sizes when the export's feature width is not the network's (a
    'tiny' export given to a 'base' trainer), and which trainer or export fits instead."""
    key = STEM_KEY[backbone]
    want = network.state_dict().get(network_key(backbone, key))
    if key not in state or want is None or state[key].shape[0] == want.shape[0]:
        return
    have, need = int(state[key].shape[0]), int(want.shape[0])
    export_size = record.get("size") or size_of_width(backbone, have) or "unknown size"
    network_size = size_of_width(backbone, need)
    who = trainer or type(network).__name__
    if network_size is None:
        network_size, fits = "another size", f"pre-train an encoder of feature width {need}"
    elif export_size in size_table(backbone):
        fits = f"use {trainer_for(backbone, export_size)} or a '{network_size}' export"
    else:
        fits = f"pre-train with -size {network_size}"
    raise TransferError(f"{source}: the export is {backbone} '{export_size}' (feature width {have}), {who} builds "
                        f"{backbone} '{network_size}' (feature width {need}): {fits}")


def transfer(network: nn.Module, state: Mapping[str, Tensor], record: Mapping, source: str,
             spacing: Optional[Sequence[float]] = None, normalization: Optional[Sequence[str]] = None,
             min_fraction: float = MIN_ENCODER_FRACTION,
             intensity_properties: Optional[Mapping] = None, trainer: Optional[str] = None) -> TransferReport:
    """Load ``state`` (an export's tensors, with its ``record``) into ``network``; raise
    :class:`TransferError` below ``min_fraction`` of the encoder's parameters (nothing is loaded then), or
    naming both sizes when the export is of another size than the network (``trainer``: who builds it)."""
    backbone = backbone_of(network)
    if record.get("backbone") != backbone:
        raise TransferError(f"{source}: a {record.get('backbone')!r} export, but {type(network).__name__} needs a "
                            f"{backbone!r} one (pre-train with -backbone {backbone})")
    check_size(network, state, record, source, backbone, trainer)
    target = network.state_dict()
    report = TransferReport(source=source, backbone=backbone)
    expected = set(encoder_keys(network, backbone))
    report.encoder_expected = sum(target[k].numel() for k in expected)
    new_state = dict(target)
    mismatched = []
    for key, value in state.items():
        name = network_key(backbone, key)
        if name not in target:
            report.ignored[key] = "pre-training only" if key.startswith(("stage", "norm.", "mask_token")) \
                else "no such parameter in the network"
            continue
        want = target[name]
        if key == "pos_embed" and value.shape != want.shape and value.shape[-1] == want.shape[-1]:
            src = [s // TOKEN_SIZE for s in record["input_size"]]
            dst = list(network.backbone.grid)
            value = interpolate_pos_embed(value, src, dst)
            report.adapted[name] = f"position embedding interpolated from grid {src} to {dst}"
        if key == STEM_KEY[backbone] and value.shape[1] == 1 and want.shape[1] > 1 and value.shape[2:] == want.shape[2:] \
                and value.shape[0] == want.shape[0]:
            value = inflate_stem(value, want.shape[1])
            report.adapted[name] = f"stem inflated from 1 to {want.shape[1]} input channels (repeated, / {want.shape[1]})"
        if value.shape != want.shape:
            mismatched.append(f"{name} {list(value.shape)} vs {list(want.shape)}")
            report.ignored[key] = f"shape {list(value.shape)}, the network has {list(want.shape)}"
            continue
        new_state[name] = value.to(want.dtype)
        report.loaded[name] = want.numel()
    groups = aliases(network)
    for key in list(report.loaded):            # every name of a loaded tensor gets its value (strict load)
        for alias in groups.get(key, [key])[1:]:
            new_state[alias] = new_state[key]
    report.new = {k: target[k].numel() for k in groups if k not in report.loaded and target[k].is_floating_point()}
    report.warnings += record_warnings(record, spacing, normalization, intensity_properties)
    if report.encoder_fraction < min_fraction:
        detail = f"; shapes differ, e.g. {mismatched[0]}" if mismatched else ""
        raise TransferError(f"{source}: only {100 * report.encoder_fraction:.1f}% of the encoder's parameters "
                            f"would load (at least {100 * min_fraction:.0f}% required){detail}")
    network.load_state_dict(new_state, strict=True)
    report.digests = {k: tensor_sha1([network.state_dict()[k]]) for k in report.loaded}
    return report


def window_of(properties: Mapping) -> Optional[Tuple[float, float]]:
    """The HU window ``(lo, hi)`` that nnU-Net's ``CTNormalization`` applies with these intensity properties
    when they encode one (``percentile_00_5 = mean = lo``, ``percentile_99_5 = hi``, ``std = hi - lo``:
    ``(clip(x, lo, hi) - lo) / (hi - lo)``), else None (a z-score of the dataset's foreground)."""
    lo, hi = properties.get("percentile_00_5"), properties.get("percentile_99_5")
    if lo is None or hi is None or hi <= lo:
        return None
    if abs(properties.get("mean", float("nan")) - lo) > 1e-6 or abs(properties.get("std", float("nan")) - (hi - lo)) > 1e-6:
        return None
    return float(lo), float(hi)


def record_warnings(record: Mapping, spacing: Optional[Sequence[float]],
                    normalization: Optional[Sequence[str]],
                    intensity_properties: Optional[Mapping] = None) -> List[str]:
    """Where the pre-training data differ from the dataset's plans (reported, not fixed): spacing, modality,
    and, for CT, intensities on another scale than the export's window (``intensity_properties``: the plans'
    ``foreground_intensity_properties_per_channel``)."""
    warnings = []
    pre_spacing = record.get("spacing")
    if spacing is not None and pre_spacing is not None and len(pre_spacing) == len(spacing):
        rel = [abs(a - b) / b for a, b in zip(pre_spacing, spacing)]
        if max(rel) > SPACING_TOLERANCE:
            warnings.append(f"pre-trained at spacing {[round(s, 3) for s in pre_spacing]} mm, the dataset's "
                            f"configuration uses {[round(s, 3) for s in spacing]} mm")
    intensity = record.get("normalisation") or {}
    if normalization:
        ct_data = any("CT" in n for n in normalization)
        if "CT" in intensity and not ct_data:
            warnings.append(f"pre-trained on CT (window {intensity['CT'].get('window')}), the dataset is normalised "
                            f"with {sorted(set(normalization))}")
        if "MRI" in intensity and "CT" not in intensity and ct_data:
            warnings.append(f"pre-trained on MRI (z-score), the dataset uses {sorted(set(normalization))}")
        if "CT" in intensity and ct_data and intensity_properties is not None:
            window = [float(v) for v in intensity["CT"].get("window", [])]
            for channel, scheme in enumerate(normalization):
                props = intensity_properties.get(str(channel), {})
                if "CT" not in scheme or not props:
                    continue
                used = window_of(props)
                if used is None or list(used) != window:
                    seen = (f"window {list(used)} HU" if used else
                            f"a z-score of the dataset's foreground (mean {props.get('mean', float('nan')):.0f}, "
                            f"std {props.get('std', float('nan')):.0f} HU)")
                    warnings.append(
                        f"pre-trained on CT clipped to {window} HU and scaled to [0, 1]; channel {channel} is fine-"
                        f"tuned on {seen}: `mim_nnunet plans-variant -d DATASET -plans_name NAME -ct_window {window[0]:g} "
                        f"{window[1]:g}` writes plans with the pre-training scale")
    return warnings
