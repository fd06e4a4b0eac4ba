"""Where a MiM fine-tuning trainer finds its pre-trained encoder (``nnUNetv2_train`` has no flag for it).

In order: the dataset's plans (key ``mim_pretrained_weights``, written by ``mim_nnunet set-weights``),
the environment variable ``MIM_PRETRAINED_WEIGHTS``, the newest export that ``mim_pretrain`` wrote
under ``$nnUNet_results`` for the same backbone and size.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Optional, Tuple

from ..common.atomic import write_json_atomic
from ..common.errors import MimError
from ..common.layout import EXPORT_GLOB

PLANS_KEY = "mim_pretrained_weights"
WEIGHTS_ENV = "MIM_PRETRAINED_WEIGHTS"
# the from-scratch twin to suggest when no weights exist
SCRATCH_TRAINER = {"hybrid": "nnUNetTrainerMiMScratch", "swin": "nnUNetTrainerSwinUNETR",
                   "resenc": "stock nnUNetTrainer with the same -p plans"}


class WeightsNotFound(MimError):
    pass


def _record(path: Path) -> dict:
    try:
        return json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}


def newest_export(results: Path, backbone: str, size: str) -> Optional[Path]:
    """The most recently written export under ``results`` whose record names ``backbone`` and ``size``."""
    records = {p: _record(p) for p in Path(results).glob(EXPORT_GLOB)}
    found = [p for p, r in records.items() if r.get("backbone") == backbone and r.get("size") == size]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def find_weights(plans: dict, backbone: str, size: str, trainer: str) -> Tuple[Path, str]:
    """(export path, how it was found); :class:`WeightsNotFound` with what to do otherwise."""
    named = (plans.get(PLANS_KEY) or {}).get(backbone)
    if named:
        if not Path(named).is_file():
            raise WeightsNotFound(f"the plans' {PLANS_KEY}[{backbone!r}] names {named}, which does not exist")
        return Path(named), f"the plans' {PLANS_KEY}[{backbone!r}]"
    env = os.environ.get(WEIGHTS_ENV)
    if env:
        if not Path(env).is_file():
            raise WeightsNotFound(f"${WEIGHTS_ENV} names {env}, which does not exist")
        return Path(env), f"${WEIGHTS_ENV}"
    results = os.environ.get("nnUNet_results")
    newest = newest_export(Path(results), backbone, size) if results else None
    if newest is not None:
        return newest, f"the newest {backbone} '{size}' export of mim_pretrain under $nnUNet_results"
    scratch = SCRATCH_TRAINER[backbone]
    raise WeightsNotFound(
        f"{trainer} found no pre-trained {backbone} '{size}' encoder: pre-train one with "
        f"`mim_pretrain -d DATA -backbone {backbone} -size {size}`, or point at an export with "
        f"`mim_nnunet set-weights -d DATASET FILE` or ${WEIGHTS_ENV}=FILE; to train without, use {scratch}")


def set_plans_weights(plans_file: Path, backbone: str, export: Path, log: Callable[[str], None] = print) -> None:
    """Record ``export`` for ``backbone`` in an nnU-Net plans file (atomic rewrite)."""
    plans = json.loads(Path(plans_file).read_text(encoding="utf-8"))
    plans.setdefault(PLANS_KEY, {})[backbone] = str(Path(export).resolve())
    write_json_atomic(plans_file, plans)
    log(f"{plans_file}: {PLANS_KEY}[{backbone!r}] = {Path(export).resolve()}")
