"""Exported encoders: safetensors weights plus the JSON adaptation record of DESIGN.md.

- hybrid: the encoder's own keys, which are the MiM release's names (``patch_embed1.proj.weight``, ...);
  fine-tuning networks hold them under ``backbone.``.
- swin: MONAI SwinViT keys without the ``swinViT.`` prefix, so the file loads strictly into
  ``SwinUNETR(...).swinViT``.
- resenc: nnU-Net ``ResidualEncoderUNet.encoder`` keys, each tensor once; the record carries the plans-format
  ``architecture`` (``mim_nnunet/networks/resenc_unet.py`` builds the network and loads it).
Both files are written to a temporary name and renamed, the record last: a record never points at
half-written weights.
"""

from __future__ import annotations

import argparse
import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, Mapping, Optional, Tuple

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .atomic import atomic_write, write_json_atomic
from .defaults import TOKEN_SIZE
from .errors import MimError

EXPORT_FORMAT = 1
KEY_MAPS = {
    "hybrid": "encoder keys are the MiM release's names; fine-tuning networks hold them under 'backbone.'",
    "swin": "keys are MONAI SwinViT's without 'swinViT.': load_state_dict into SwinUNETR(...).swinViT, strict",
    "resenc": "keys are nnU-Net ResidualEncoderUNet's without 'encoder.', each tensor once (no 'all_modules.N' "
              "aliases): mim_nnunet.networks.resenc_unet.load_encoder_state, strict; the record's 'architecture'",
}


class ExportError(MimError):
    pass


def encoder_state(encoder: torch.nn.Module, backbone: str) -> Dict[str, torch.Tensor]:
    """The tensors an export holds, under the names of the key map."""
    state = encoder.state_dict()
    if backbone == "swin":
        return {k[len("swinViT."):]: v for k, v in state.items() if k.startswith("swinViT.")}
    if backbone == "resenc":
        return encoder.export_state()
    return dict(state)


def write_export(state: Mapping[str, torch.Tensor], record: Dict, path: os.PathLike) -> Tuple[Path, Path]:
    """``path`` (``.safetensors``) and its record ``path`` with ``.json``; returns both paths."""
    weights = Path(path)
    weights.parent.mkdir(parents=True, exist_ok=True)
    meta = weights.with_suffix(".json")
    record = {"format": EXPORT_FORMAT, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "weights": weights.name, "num_tensors": len(state),
              "num_parameters": int(sum(t.numel() for t in state.values())), **record}
    atomic_write(weights, lambda p: save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(p)))
    write_json_atomic(meta, record)
    return weights, meta


def export_encoder(encoder: torch.nn.Module, backbone: str, size: str, path: os.PathLike, *, in_channels: int,
                   input_size, spacing=None, intensity=None, manifest_hash: Optional[str] = None,
                   steps: Optional[int] = None) -> Tuple[Path, Path]:
    """Write a pre-trained encoder and its adaptation record."""
    record = {"backbone": backbone, "size": size, "key_map": KEY_MAPS[backbone], "in_channels": in_channels,
              "input_size": list(input_size), "token_size": TOKEN_SIZE, "spacing": spacing,
              "normalisation": intensity, "manifest_hash": manifest_hash, "steps": steps,
              **(encoder.export_record() if hasattr(encoder, "export_record") else {})}
    return write_export(encoder_state(encoder, backbone), record, path)


def load_export(path: os.PathLike) -> Tuple[Dict[str, torch.Tensor], Dict]:
    """(tensors, record) of an export; one-line errors for missing, corrupt or foreign files."""
    weights = Path(path)
    meta = weights.with_suffix(".json")
    for p in (weights, meta):
        if not p.is_file():
            raise ExportError(f"{p}: not found (an export is a .safetensors file with its .json record)")
    try:
        record = json.loads(meta.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ExportError(f"{meta}: not a JSON record ({exc})") from None
    if record.get("format") != EXPORT_FORMAT or record.get("backbone") not in KEY_MAPS:
        raise ExportError(f"{meta}: not a mim-nnunet export record (format {record.get('format')!r}, "
                          f"backbone {record.get('backbone')!r})")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ExportError(f"{weights}: corrupt or not a safetensors file ({exc})") from None
    if len(state) != record.get("num_tensors", len(state)):
        raise ExportError(f"{weights}: holds {len(state)} tensors, its record says {record['num_tensors']}")
    return state, record


def _load_official_checkpoint(path: Path) -> Dict[str, torch.Tensor]:
    # The release pickles its argparse Namespace next to the weights: allow exactly that, nothing else.
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ExportError(f"{path}: not found") from None
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ExportError(f"{path}: refused or unreadable checkpoint ({first[:300]})") from None
    state = checkpoint.get("model", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ExportError(f"{path}: no state dict under 'model'")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


def import_official(path: os.PathLike, out: os.PathLike, size: str = "base") -> Dict:
    """Convert a checkpoint published by the MiM authors into an export; report every key's fate."""
    from .backbones import build_encoder

    state = _load_official_checkpoint(Path(path))
    if "pos_embed" not in state or "patch_embed1.proj.weight" not in state:
        raise ExportError(f"{path}: not a MiM hybrid checkpoint (no pos_embed / patch_embed1 keys)")
    tokens = state["pos_embed"].shape[1]
    side = round(tokens ** (1 / 3))
    if side ** 3 != tokens:
        raise ExportError(f"{path}: pos_embed has {tokens} tokens, not a cubic grid")
    in_channels = state["patch_embed1.proj.weight"].shape[1]
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
    record = {"backbone": "hybrid", "size": size, "key_map": KEY_MAPS["hybrid"], "in_channels": int(in_channels),
              "input_size": input_size, "token_size": TOKEN_SIZE, "spacing": None, "normalisation": None,
              "manifest_hash": None, "steps": None, "source": f"official MiM checkpoint {Path(path).name}"}
    weights, meta = write_export({k: state[k] for k in kept}, record, out)
    report = {"weights": str(weights), "record": str(meta), "kept": kept, "dropped": dropped}
    write_json_atomic(weights.with_name(weights.stem + "_import_report.json"), report)
    return report
