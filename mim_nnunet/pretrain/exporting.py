"""From a pre-training run to the encoder export that fine-tuning reads."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Tuple

import torch

from ..backbones import build_encoder
from ..export import export_encoder
from .checkpoint import CheckpointError, load_checkpoint
from .settings import RunSettings

EXPORT_DIR = "export"


def export_name(backbone: str, size: str) -> str:
    return f"mim_{backbone}_{size}.safetensors"


def export_run(encoder: torch.nn.Module, settings: RunSettings, steps: int, path: Path) -> Tuple[Path, Path]:
    """Write ``encoder`` with the run's adaptation record (spacing, normalisation, sizes, steps)."""
    config = settings.config
    return export_encoder(encoder, settings.backbone, settings.size, path, in_channels=config.in_channels,
                          input_size=config.input_size, spacing=settings.spacing, intensity=settings.intensity,
                          manifest_hash=settings.manifest_hash, steps=steps)


def export_checkpoint(checkpoint: Path, out: Optional[Path] = None) -> Tuple[Path, Path]:
    """``mim_nnunet export CHECKPOINT``: the encoder of a (possibly unfinished) run. Default output:
    ``<run>/export/mim_<backbone>_<size>_step<k>.safetensors`` next to the checkpoint."""
    state = load_checkpoint(Path(checkpoint))
    settings = RunSettings.from_dict(state["settings"])
    config = settings.config
    encoder, _ = build_encoder(settings.backbone, settings.size, config.in_channels, config.input_size)
    prefix = "encoder."
    weights = {k[len(prefix):]: v for k, v in state["model"].items() if k.startswith(prefix)}
    try:
        result = encoder.load_state_dict(weights, strict=False)
    except RuntimeError as exc:   # shapes differ
        raise CheckpointError(f"{checkpoint}: encoder weights do not fit the {settings.backbone} '{settings.size}' "
                              f"encoder ({str(exc).strip().splitlines()[-1].strip()[:200]})") from None
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(f"{checkpoint}: encoder weights do not match the {settings.backbone} "
                              f"'{settings.size}' encoder ({len(result.missing_keys)} missing, e.g. "
                              f"{result.missing_keys[:2]}; {len(result.unexpected_keys)} unexpected)")
    if out is None:
        stem = export_name(settings.backbone, settings.size).replace(".safetensors", f"_step{state['step']}")
        out = Path(checkpoint).parent / EXPORT_DIR / f"{stem}.safetensors"
    return export_run(encoder, settings, state["step"], Path(out))
