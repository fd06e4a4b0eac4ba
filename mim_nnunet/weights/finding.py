"""Where a MiM fine-tuning trainer finds its pre-trained encoder (``nnUNetv2_train`` has no flag for it).

In order: the dataset's plans (key ``mim_pretrained_weights``, written by ``mim_nnunet set-weights``),
the environment variable ``MIM_PRETRAINED_WEIGHTS``, the newest export that ``mim_pretrain`` wrote
under ``$nnUNet_results`` for the same backbone and size, preferring those pre-trained on the dataset's
modality (the record's ``normalisation`` names the modalities of the pre-training data; the dataset's is
``dataset.json`` ``channel_names`` of channel 0: ``CT``, anything else MRI). When several exports qualify,
the "how it was found" line names the choice, how many others there were and how to pick another.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, List, Mapping, Optional, Tuple

from ..common.atomic import write_json_atomic
from ..common.errors import MimError
from ..common.layout import EXPORT_GLOB

PLANS_KEY = "mim_pretrained_weights"
WEIGHTS_ENV = "MIM_PRETRAINED_WEIGHTS"
# the from-scratch twin to suggest when no weights exist
SCRATCH_TRAINER = {"hybrid": "nnUNetTrainerMiMScratch", "swin": "nnUNetTrainerSwinUNETR",
                   "resenc": "stock nnUNetTrainer with the same -p plans"}
# the pre-trained trainer of each backbone at its full sizes; other sizes are its short variants
# <name>_<size>_<budget>
PRETRAINED_TRAINER = {"hybrid": "nnUNetTrainerMiM", "swin": "nnUNetTrainerMiMSwinUNETR", "resenc": "nnUNetTrainerMiMResEnc"}
FULL_SIZES = ("base", "M", "L")


def trainer_for(backbone: str, size: str) -> str:
    """The trainer (family) that builds ``backbone`` at ``size``, for advice: ``nnUNetTrainerMiM``,
    ``nnUNetTrainerMiM_tiny_*``."""
    family = PRETRAINED_TRAINER[backbone]
    return family if size in FULL_SIZES else f"{family}_{size}_* (e.g. {family}_{size}_1epoch)"


def short_variant(family: str, size: str) -> str:
    """A concrete short trainer of ``family`` at ``size`` shipped in ``trainers/`` (``<family>_<size>_<budget>``):
    the 10-epoch one where there is one, else the first; the family pattern when none is shipped."""
    import re

    from ..common.environment import trainers_dir
    names = sorted({m.group(1) for f in trainers_dir().glob("*.py")
                    for m in re.finditer(rf"^class ({re.escape(family)}_{re.escape(size)}_\w+)\(",
                                         f.read_text(encoding="utf-8"), re.M)})
    preferred = [n for n in names if n.endswith("_10epochs")]
    return (preferred or names or [f"{family}_{size}_*"])[0]


def exports_found(plans: Mapping, results: Optional[Path]) -> List[Tuple[str, str]]:
    """(backbone, size) of every export a MiM trainer could load for these plans: the plans' own
    ``mim_pretrained_weights``, ``$MIM_PRETRAINED_WEIGHTS``, every export of mim_pretrain under ``results``."""
    paths = [Path(p) for p in (plans.get(PLANS_KEY) or {}).values()]
    if os.environ.get(WEIGHTS_ENV):
        paths.append(Path(os.environ[WEIGHTS_ENV]))
    if results is not None:
        paths += sorted(Path(results).glob(EXPORT_GLOB))
    found = []
    for path in paths:
        record = _record(path) if path.is_file() else {}
        if record.get("backbone") in PRETRAINED_TRAINER and record.get("size"):
            found.append((record["backbone"], str(record["size"])))
    return sorted(set(found))


def suggested_trainer(plans: Mapping, results: Optional[Path]) -> Tuple[str, str]:
    """(trainer, why) for advice after planning: the MiM trainer whose backbone and size match an export found
    (:func:`exports_found`; the hybrid backbone first, a full size before a short one, whose variants are
    CPU-sized, e.g. ``nnUNetTrainerMiM_tiny_10epochs`` for a 'tiny' export), else ``nnUNetTrainerMiM`` with
    what to do first."""
    found = exports_found(plans, results)
    for backbone, family in PRETRAINED_TRAINER.items():
        sizes = [size for b, size in found if b == backbone]
        full = [size for size in sizes if size in FULL_SIZES]
        if full:
            return family, f"matches the {backbone} '{full[0]}' export found"
        if sizes:
            return (short_variant(family, sizes[0]),
                    f"the only {backbone} export found is '{sizes[0]}'; {family} would need a full-size one")
    return (PRETRAINED_TRAINER["hybrid"], f"no MiM export found yet: pre-train first (mim_pretrain), or train "
                                          f"without with {SCRATCH_TRAINER['hybrid']}")


class WeightsNotFound(MimError):
    pass


def _record(path: Path) -> dict:
    try:
        return json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}


def dataset_modality(dataset_json: Mapping) -> Optional[str]:
    """``CT`` or ``MRI``: nnU-Net's ``dataset.json`` ``channel_names`` (or the older ``modality``) of channel 0,
    as nnU-Net reads it (``CT`` selects its CT normalisation, anything else is not CT); None when absent."""
    names = dataset_json.get("channel_names") or dataset_json.get("modality") or {}
    first = names.get("0", names.get(0)) if isinstance(names, Mapping) else None
    if first is None:
        return None
    return "CT" if str(first).strip().upper() == "CT" else "MRI"


def pretrained_modalities(record: Mapping) -> List[str]:
    """The modalities an export was pre-trained on: the keys of its record's ``normalisation`` (``CT``, ``MRI``)."""
    return sorted(record.get("normalisation") or {})


def newest_export(results: Path, backbone: str, size: str, modality: Optional[str] = None) -> Tuple[Optional[Path], str]:
    """(the most recently written export under ``results`` whose record names ``backbone`` and ``size``,
    preferring those pre-trained on ``modality``; how it was chosen). (None, "") when there is none."""
    records = {p: _record(p) for p in Path(results).glob(EXPORT_GLOB)}
    found = [p for p, r in records.items() if r.get("backbone") == backbone and r.get("size") == size]
    if not found:
        return None, ""
    matching = [p for p in found if modality in pretrained_modalities(records[p])] if modality else []
    pool = matching or found
    chosen = max(pool, key=lambda p: p.stat().st_mtime)
    how = f"the newest {backbone} '{size}' export of mim_pretrain under $nnUNet_results"
    if modality:
        how += (f" pre-trained on {modality} (the dataset's modality)" if matching else
                f" (none was pre-trained on {modality}, the dataset's modality; this one on "
                f"{'+'.join(pretrained_modalities(records[chosen])) or 'unrecorded data'})")
    if len(found) > 1:
        how += (f", chosen from {len(found)} candidates ({len(found) - 1} other(s)); pick another with "
                f"`mim_nnunet set-weights -d DATASET FILE` or ${WEIGHTS_ENV}=FILE")
    return chosen, how


def find_weights(plans: dict, backbone: str, size: str, trainer: str,
                 modality: Optional[str] = None) -> Tuple[Path, str]:
    """(export path, how it was found); :class:`WeightsNotFound` with what to do otherwise. ``modality``
    (the dataset's, :func:`dataset_modality`) ranks the exports found under ``$nnUNet_results``."""
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
    newest, how = newest_export(Path(results), backbone, size, modality) if results else (None, "")
    if newest is not None:
        return newest, how
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
