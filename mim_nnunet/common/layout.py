"""Where pre-training puts its files (docs/pretraining.md): one home for every path name.

    $nnUNet_preprocessed/MiM_<name>/                 manifest.json, fingerprint.json, leakage_checks.json,
                                                     plan_<backbone>_<size>.json,
                                                     store_<manifest hash>_<spacing>/ (one .npy + .json per case)
    $nnUNet_results/MiM_<name>/<backbone>_<size>[_<run>]/
                                                     checkpoint_latest.pt, settings.json, log.*, progress.png,
                                                     reconstructions/, export/mim_<backbone>_<size>.safetensors (+ .json)
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Mapping, Optional, Sequence

from .environment import require_nnunet_paths

COLLECTION_PREFIX = "MiM_"
MANIFEST = "manifest.json"
FINGERPRINT = "fingerprint.json"
LEAKAGE_CHECKS = "leakage_checks.json"       # the leakage checks run on a collection (for export records and cards)
SETTINGS = "settings.json"
CHECKPOINT = "checkpoint_latest.pt"
EXPORT_DIR = "export"
RECONSTRUCTIONS_DIR = "reconstructions"
# every export mim_pretrain writes, relative to $nnUNet_results (how fine-tuning finds them)
EXPORT_GLOB = f"{COLLECTION_PREFIX}*/*/{EXPORT_DIR}/*.safetensors"


def preprocessed_folder(name: str) -> Path:
    """``$nnUNet_preprocessed/MiM_<name>``: manifest, fingerprint, plans and stores of a collection."""
    root = Path(require_nnunet_paths(("nnUNet_preprocessed",))["nnUNet_preprocessed"])
    return root / f"{COLLECTION_PREFIX}{name}"


def plan_file(folder: Path, backbone: str, size: str) -> Path:
    return Path(folder) / f"plan_{backbone}_{size}.json"


def store_folder(folder: Path, manifest_hash: str, spacing: Sequence[float],
                 variant: Optional[Mapping] = None) -> Path:
    """The preprocessed arrays: named by the data's content and the spacing, so changed data or another
    spacing never reuses stale arrays; ``variant`` (edited preprocessing values) adds a digest of them."""
    name = f"store_{manifest_hash[:12]}_{'x'.join(f'{s:g}' for s in spacing)}"
    if variant:
        name += "_" + hashlib.sha256(json.dumps(variant, sort_keys=True).encode()).hexdigest()[:8]
    return Path(folder) / name


def run_folder(name: str, backbone: str, size: str, run: Optional[str] = None,
               results: Optional[Path] = None) -> Path:
    """``$nnUNet_results/MiM_<name>/<backbone>_<size>[_<run>]``: one pre-training run (``results``
    instead of ``$nnUNet_results`` when given)."""
    root = Path(results) if results else Path(require_nnunet_paths(("nnUNet_results",))["nnUNet_results"])
    return root / f"{COLLECTION_PREFIX}{name}" / (f"{backbone}_{size}" + (f"_{run}" if run else ""))


def export_path(run: Path, backbone: str, size: str, step: Optional[int] = None) -> Path:
    """A run's export: ``export/mim_<backbone>_<size>[_step<k>].safetensors`` (``step`` for an export of
    an unfinished run, ``mim_nnunet export``)."""
    stem = f"mim_{backbone}_{size}" + (f"_step{step}" if step is not None else "")
    return Path(run) / EXPORT_DIR / f"{stem}.safetensors"
