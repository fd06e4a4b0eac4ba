"""Training checkpoints: the complete state of a run, written atomically, read with ``weights_only=True``;
and the encoder of a run or of a checkpoint written as an export.

A checkpoint holds the model, optimiser, loss scaler, the number of steps done, the settings and the
RNG states of every rank. The learning rate is a function of the step and the data stream a function
of (seed, batch index), so these are all a resumed run needs to continue exactly.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from ..common.atomic import atomic_write, write_json_atomic
from ..common.errors import MimError, first_line, last_line
from ..common.hashing import file_sha256
from ..common.layout import export_path
from ..weights.export import export_encoder
from .settings import RunSettings

CHECKPOINT_FORMAT = "mim-nnunet-pretrain-checkpoint/1"
ENCODER_PREFIX = "encoder."      # the MiM model holds its encoder under this name


class CheckpointError(MimError):
    """A checkpoint that is missing, corrupt or not ours."""


def capture_rng() -> Dict:
    """This process's RNG states (python, numpy, torch CPU, and the CUDA state of this rank's own GPU
    only: the run may continue with another number of GPUs visible per process) as tensors and plain values."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"python": random.getstate(), "numpy": [kind, torch.from_numpy(keys.copy()), pos, has_gauss, gauss],
            "torch": torch.get_rng_state(),
            "cuda": [torch.cuda.get_rng_state()] if torch.cuda.is_available() else []}


def restore_rng(state: Dict) -> None:
    """Set the states :func:`capture_rng` took; the CUDA state goes to this rank's current GPU (earlier
    checkpoints held one state per visible GPU: the current GPU's index picks it when there is one)."""
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy(), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available():
        index = 0 if len(cuda) == 1 else torch.cuda.current_device()
        if index < len(cuda):
            torch.cuda.set_rng_state(cuda[index])


def save_checkpoint(path: Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler, step: int,
                    settings: Dict, rng: List[Dict]) -> Path:
    """Write the run's state after ``step`` optimiser steps; the previous file stays until the new one is
    complete (write to a temporary name, then rename)."""
    state = {"format": CHECKPOINT_FORMAT, "step": step, "model": model.state_dict(),
             "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(), "settings": settings, "rng": rng}

    def write(tmp: Path) -> None:
        torch.save(state, tmp)
        # the new file's checksum joins the old one's before the rename, so a kill between the two writes
        # leaves a checksum record that still matches whichever file is in place
        known = checksums(path)
        write_json_atomic(checksum_path(path), {"sha256": [file_sha256(str(tmp))] + known[:1]})
    atomic_write(path, write)
    write_json_atomic(checksum_path(path), {"sha256": [file_sha256(str(path))]})
    return path


def checksum_path(path: Path) -> Path:
    """The checksum record of a checkpoint: ``<name>.sha256.json`` beside it."""
    return Path(path).with_name(Path(path).name + ".sha256.json")


def checksums(path: Path) -> List[str]:
    record = checksum_path(path)
    try:
        return list(json.loads(record.read_text(encoding="utf-8"))["sha256"]) if record.is_file() else []
    except (ValueError, KeyError, TypeError):
        return []


def load_checkpoint(path: Path, map_location="cpu") -> Dict:
    """A checkpoint written by :func:`save_checkpoint`; one-line errors for anything else."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no checkpoint there")
    known = checksums(path)          # checkpoints written before 0.2 have no record: not checked
    if checksum_path(path).is_file() and file_sha256(str(path)) not in known:
        raise CheckpointError(f"{path}: content checksum differs from {checksum_path(path).name} (the file changed "
                              f"after it was written: corrupt copy or bit flip)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: corrupt or not a mim-nnunet checkpoint ({first_line(exc, 200)})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a mim-nnunet pre-training checkpoint "
                              f"(format {state.get('format') if isinstance(state, dict) else type(state).__name__!r})")
    return state


def remove_stale_temporaries(folder: Path) -> List[Path]:
    """Delete half-written files a killed run left behind (``.tmp_<pid>_<name>``); returns them."""
    stale = sorted(Path(folder).rglob(".tmp_*")) if Path(folder).is_dir() else []
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def export_run(encoder: torch.nn.Module, settings: RunSettings, steps: int, path: Path,
               validation: Optional[Dict] = None) -> Tuple[Path, Path]:
    """Write ``encoder`` with the run's adaptation record (spacing, normalisation, sizes, steps and, when
    known, the validation reconstruction loss at the run's first and last validation)."""
    config = settings.config
    extra = {"validation": validation} if validation else {}
    return export_encoder(encoder, settings.backbone, settings.size, path, in_channels=config.in_channels,
                          input_size=config.input_size, spacing=settings.spacing, normalisation=settings.intensity,
                          manifest_hash=settings.manifest_hash, steps=steps, **extra)


def export_checkpoint(checkpoint: Path, out: Optional[Path] = None) -> Tuple[Path, Path]:
    """``mim_nnunet export CHECKPOINT``: the encoder of a (possibly unfinished) run. Default output:
    ``<run>/export/mim_<backbone>_<size>_step<k>.safetensors`` next to the checkpoint."""
    from ..backbones import build_encoder

    state = load_checkpoint(Path(checkpoint))
    settings = RunSettings.from_dict(state["settings"])
    config = settings.config
    try:
        encoder, _ = build_encoder(settings.backbone, settings.size, config.in_channels, config.input_size,
                                   settings.backbone_sizes)
    except ValueError as exc:    # its settings name a backbone its sizes do not describe
        raise CheckpointError(f"{checkpoint}: encoder weights do not fit the {settings.backbone} '{settings.size}' "
                              f"encoder its settings name ({exc})") from None
    weights = {k[len(ENCODER_PREFIX):]: v for k, v in state["model"].items() if k.startswith(ENCODER_PREFIX)}
    try:
        result = encoder.load_state_dict(weights, strict=False)
    except RuntimeError as exc:   # shapes differ
        raise CheckpointError(f"{checkpoint}: encoder weights do not fit the {settings.backbone} '{settings.size}' "
                              f"encoder ({last_line(str(exc), 200)})") from None
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(f"{checkpoint}: encoder weights do not match the {settings.backbone} "
                              f"'{settings.size}' encoder ({len(result.missing_keys)} missing, e.g. "
                              f"{result.missing_keys[:2]}; {len(result.unexpected_keys)} unexpected)")
    if out is None:
        out = export_path(Path(checkpoint).parent, settings.backbone, settings.size, step=state["step"])
    return export_run(encoder, settings, state["step"], Path(out))
