"""``mim_nnunet import-official``: a checkpoint published by the MiM authors -> our export.

The release pickles its argparse Namespace next to the weights: exactly that class is allowed when
unpickling (:func:`mim_nnunet.common.safe_load.load_tensors_file`), nothing else.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Dict

import torch

from ..common.atomic import write_json_atomic
from ..common.errors import first_line
from ..common.safe_load import UnsafeFileError, load_tensors_file
from ..mim.tokens import TOKEN_SIZE
from .export import STEM_KEY, ExportError, export_record, write_export

OFFICIAL_PREFIX = "module."      # the release saves its DDP-wrapped model


def load_official_checkpoint(path: Path) -> Dict[str, torch.Tensor]:
    """``checkpoint['model']`` of a release checkpoint, without the DDP prefix; one-line errors otherwise."""
    try:
        checkpoint = load_tensors_file(path, allow=[argparse.Namespace],
                                       remedy="The MiM authors' release holds only tensors and its arguments: "
                                              "download it again from their page")
    except FileNotFoundError:
        raise ExportError(f"{path}: not found") from None
    except UnsafeFileError as exc:
        raise ExportError(str(exc)) from None
    except Exception as exc:
        raise ExportError(f"{path}: refused or unreadable checkpoint ({first_line(exc)})") from None
    state = checkpoint.get("model", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ExportError(f"{path}: no state dict under 'model'")
    return {k[len(OFFICIAL_PREFIX):] if k.startswith(OFFICIAL_PREFIX) else k: v for k, v in state.items()}


def import_official(path: os.PathLike, out: os.PathLike, size: str = "base") -> Dict:
    """Convert a checkpoint published by the MiM authors into an export; report every key's fate."""
    from ..backbones import build_encoder

    state = load_official_checkpoint(Path(path))
    if "pos_embed" not in state or STEM_KEY["hybrid"] not in state:
        raise ExportError(f"{path}: not a MiM hybrid checkpoint (no pos_embed / {STEM_KEY['hybrid']} keys)")
    tokens = state["pos_embed"].shape[1]
    side = round(tokens ** (1 / 3))
    if side ** 3 != tokens:
        raise ExportError(f"{path}: pos_embed has {tokens} tokens, not a cubic grid")
    in_channels = state[STEM_KEY["hybrid"]].shape[1]
    input_size = [side * TOKEN_SIZE] * 3
    encoder, _ = build_encoder("hybrid", size, in_channels, input_size)
    wanted = encoder.state_dict()
    kept = sorted(k for k in state if k in wanted and state[k].shape == wanted[k].shape)
    wrong_shape = sorted(k for k in state if k in wanted and state[k].shape != wanted[k].shape)
    dropped = sorted(k for k in state if k not in wanted)
    missing = sorted(k for k in wanted if k not in kept)
    if wrong_shape or missing:
        raise ExportError(f"{path}: does not match the hybrid '{size}' encoder: {len(missing)} keys missing "
                          f"(e.g. {(missing or wrong_shape)[:3]}), {len(wrong_shape)} with other shapes")
    record = export_record("hybrid", size, in_channels, input_size,
                           source=f"official MiM checkpoint {Path(path).name}")
    weights, meta = write_export({k: state[k] for k in kept}, record, out)
    report = {"weights": str(weights), "record": str(meta), "kept": kept, "dropped": dropped}
    write_json_atomic(weights.with_name(weights.stem + "_import_report.json"), report)
    return report
