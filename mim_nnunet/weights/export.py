"""Exported encoders: safetensors weights plus the JSON adaptation record (docs/using-weights-elsewhere.md). This module is
the one home of the key-name contract:

- hybrid: the encoder's own keys, which are the MiM release's names (``patch_embed1.proj.weight``, ...);
  fine-tuning networks (MiMUNETR) hold them under ``backbone.``.
- swin: MONAI SwinViT keys without the ``swinViT.`` prefix, so the file loads strictly into
  ``SwinUNETR(...).swinViT``; SwinUNETR holds them under ``swinViT.``.
- resenc: nnU-Net ``ResidualEncoderUNet.encoder`` keys, each tensor once (nnU-Net's blocks register every
  conv a second time, ``all_modules.N``); ``ResidualEncoderUNet`` holds them under ``encoder.``, and the
  record carries the plans-format ``architecture`` (:mod:`mim_nnunet.networks.resenc_unet` builds and loads).

All files are written to a temporary name and renamed, the weights first: a record never points at
half-written weights. The model card (``<name>.card.md``) is written from the record.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, Mapping, Optional, Sequence, Tuple

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..common.atomic import atomic_write, write_json_atomic
from ..common.errors import MimError, first_line
from ..common.hashing import file_sha256
from ..common.tensors import first_nonfinite
from ..mim.tokens import TOKEN_SIZE
from .card import write_card

EXPORT_FORMAT = 1
# prefix of the encoder's own state-dict keys that an export drops
EXPORT_PREFIX = {"hybrid": "", "swin": "swinViT.", "resenc": ""}
# prefix under which a segmentation network holds the exported tensors
NETWORK_PREFIX = {"hybrid": "backbone.", "swin": "swinViT.", "resenc": "encoder."}
# export key of the first conv, the one inflated for multi-channel input
STEM_KEY = {"hybrid": "patch_embed1.proj.weight", "swin": "patch_embed.proj.weight",
            "resenc": "stem.convs.0.conv.weight"}
KEY_MAPS = {
    "hybrid": "encoder keys are the MiM release's names; fine-tuning networks hold them under 'backbone.'",
    "swin": "keys are MONAI SwinViT's without 'swinViT.': load_state_dict into SwinUNETR(...).swinViT, strict",
    "resenc": "keys are nnU-Net ResidualEncoderUNet's without 'encoder.', each tensor once (no 'all_modules.N' "
              "aliases): mim_nnunet.networks.resenc_unet.load_encoder_state, strict; the record's 'architecture'",
}


class ExportError(MimError):
    pass


def network_key(backbone: str, key: str) -> str:
    """Where a segmentation network holds export tensor ``key``."""
    return NETWORK_PREFIX[backbone] + key


def encoder_state(encoder: torch.nn.Module, backbone: str) -> Dict[str, torch.Tensor]:
    """The tensors an export holds, under the names of the key map."""
    if hasattr(encoder, "export_state"):          # resenc: each tensor once, under nnU-Net's encoder keys
        return encoder.export_state()
    prefix = EXPORT_PREFIX[backbone]
    return {k[len(prefix):]: v for k, v in encoder.state_dict().items() if k.startswith(prefix)}


def export_record(backbone: str, size: str, in_channels: int, input_size: Sequence[int], *,
                  spacing: Optional[Sequence[float]] = None, normalisation: Optional[Mapping] = None,
                  manifest_hash: Optional[str] = None, steps: Optional[int] = None, **extra) -> Dict:
    """The adaptation record's content: what fine-tuning needs to know about the weights."""
    return {"backbone": backbone, "size": size, "key_map": KEY_MAPS[backbone], "in_channels": int(in_channels),
            "input_size": [int(s) for s in input_size], "token_size": TOKEN_SIZE, "spacing": spacing,
            "normalisation": normalisation, "manifest_hash": manifest_hash, "steps": steps, **extra}


def write_export(state: Mapping[str, torch.Tensor], record: Dict, path: os.PathLike) -> Tuple[Path, Path]:
    """``path`` (``.safetensors``), its record ``path`` with ``.json`` and its model card ``.card.md``
    (:mod:`mim_nnunet.weights.card`); returns the weights' and the record's paths. Refused, with nothing
    written, when a tensor holds NaN or inf."""
    weights = Path(path)
    bad = first_nonfinite(state.items())
    if bad is not None:
        raise ExportError(f"{weights}: not written: tensor {bad[0]!r} holds {bad[1]} non-finite value(s) (NaN/inf)"
                          f"{'; the file there is kept as it was' if weights.is_file() else ''}")
    weights.parent.mkdir(parents=True, exist_ok=True)
    meta = weights.with_suffix(".json")
    record = {"format": EXPORT_FORMAT, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "weights": weights.name, "num_tensors": len(state),
              "num_parameters": int(sum(t.numel() for t in state.values())), **record}
    atomic_write(weights, lambda p: save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(p)))
    # the content checksum, verified on load: a bit flipped on disk or in transfer is refused, not trained on
    record = {**record, "sha256": file_sha256(str(weights))}
    write_json_atomic(meta, record)
    write_card(weights, record)           # the person-readable side of the same record
    return weights, meta


def export_encoder(encoder: torch.nn.Module, backbone: str, size: str, path: os.PathLike, *, in_channels: int,
                   input_size, **record) -> Tuple[Path, Path]:
    """Write a pre-trained encoder and its adaptation record (``record``: see :func:`export_record`)."""
    extra = encoder.export_record() if hasattr(encoder, "export_record") else {}    # resenc: its architecture
    return write_export(encoder_state(encoder, backbone),
                        export_record(backbone, size, in_channels, input_size, **record, **extra), path)


def load_export(path: os.PathLike) -> Tuple[Dict[str, torch.Tensor], Dict]:
    """(tensors, record) of an export; one-line errors for missing, corrupt or foreign files."""
    weights = Path(path)
    meta = weights.with_suffix(".json")
    for p in (weights, meta):
        if not p.is_file():
            raise ExportError(f"{p}: not found (an export is a .safetensors file with its .json record)")
    try:
        record = json.loads(meta.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ExportError(f"{meta}: not a JSON record ({first_line(exc)})") from None
    if not isinstance(record, dict) or record.get("format") != EXPORT_FORMAT or record.get("backbone") not in KEY_MAPS:
        fmt, backbone = (record.get("format"), record.get("backbone")) if isinstance(record, dict) else (None, None)
        raise ExportError(f"{meta}: not a mim-nnunet export record (format {fmt!r}, backbone {backbone!r})")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ExportError(f"{weights}: corrupt or not a safetensors file ({first_line(exc)})") from None
    if len(state) != record.get("num_tensors", len(state)):
        raise ExportError(f"{weights}: holds {len(state)} tensors, its record says {record['num_tensors']}")
    if record.get("sha256") and file_sha256(str(weights)) != record["sha256"]:    # exports before 0.2.0 have none
        raise ExportError(f"{weights}: content checksum differs from its record {meta.name} (the file changed "
                          f"after export: corrupt copy or bit flip)")
    bad = first_nonfinite(state.items())
    if bad is not None:
        raise ExportError(f"{weights}: tensor {bad[0]!r} holds {bad[1]} non-finite value(s) (NaN/inf); "
                          f"refusing to fine-tune from it")
    return state, record
