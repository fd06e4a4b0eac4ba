"""What ``-d`` names, turned into cases: collections, nnU-Net datasets, folders, MONAI datalists.

A case is one volume: its channel files (or DICOM series folders), its declared modality (``CT``,
``MRI``, or ``auto``: detected from the data, see :mod:`.modality`) and its source.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence, Tuple, Union

from ..common.environment import shipped_folder
from ..common.errors import MimError, first_line
from .image_io import is_dicom_folder, is_image_file
from .modality import AUTO, MODALITIES, declared_modality

COLLECTIONS_DIR = "plans/collections"
DATA_ROOT_ENV = "MIM_DATA_ROOT"          # what collection files name as their root_env
MODALITY_NAMES = f"{', '.join(MODALITIES)}, {AUTO} or an MRI channel name such as T1"


@dataclass(frozen=True)
class Case:
    case_id: str
    files: Tuple[str, ...]
    modality: str          # declared: "CT", "MRI" or "auto"
    source: str


class SourceError(MimError):
    pass


def collections_dir() -> Path:
    return shipped_folder(COLLECTIONS_DIR, "1k.json")


def available_collections() -> List[str]:
    return sorted(p.stem for p in collections_dir().glob("*.json"))


def _case_id(source: str, path: Path, root: Path) -> str:
    rel = str(path.relative_to(root)) if path.is_relative_to(root) else path.name
    return f"{source}__{re.sub(r'[^A-Za-z0-9_.-]+', '_', rel)}"


def collection_cases(name: str, allow_partial: bool, log=print) -> List[Case]:
    """Cases of a collection file; a missing or short source is an error unless ``allow_partial``."""
    spec = json.loads((collections_dir() / f"{name}.json").read_text(encoding="utf-8"))
    root_env = spec["root_env"]
    root = os.environ.get(root_env)
    if not root:
        listed = " | ".join(f"{s['name']}: ${root_env}/{s['folder']} ({s['expected']} x {s['glob']}; obtain from "
                            f"{s['obtain']})" for s in spec["sources"])
        raise SourceError(f"{root_env} is not set: set it to the folder that holds the '{name}' collection's "
                          f"sources: {listed}")
    cases, problems = [], []
    for src in spec["sources"]:
        folder = Path(root) / src["folder"]
        files = sorted(folder.glob(src["glob"])) if folder.is_dir() else []
        if len(files) < src["expected"]:
            what = "missing" if not folder.is_dir() else f"{len(files)} of {src['expected']} files"
            problems.append(f"{src['name']} ({folder}, {src['glob']}): {what}; obtain from {src['obtain']}")
        cases += [Case(_case_id(src["name"], f, folder), (str(f),), declared_modality(src["modality"]), src["name"])
                  for f in files]
    if problems and not allow_partial:
        raise SourceError(f"collection '{name}' is incomplete: " + " | ".join(problems)
                          + " (use --allow_partial to proceed with what exists)")
    for p in problems:
        log(f"WARNING: --allow_partial: proceeding without part of {p}")
    return cases


def nnunet_dataset_cases(spec: str) -> List[Case]:
    """All images (imagesTr and imagesTs, every channel) of an nnU-Net raw dataset; labels ignored."""
    from nnunetv2.utilities.dataset_name_id_conversion import (
        maybe_convert_to_dataset_name,
    )

    if not os.environ.get("nnUNet_raw"):
        raise SourceError(f"nnUNet_raw is not set, so dataset '{spec}' cannot be found")
    try:
        name = maybe_convert_to_dataset_name(int(spec) if spec.isdigit() else spec)
    except Exception as exc:
        raise SourceError(f"nnU-Net dataset '{spec}' not found in {os.environ['nnUNet_raw']} ({exc})") from None
    root = Path(os.environ["nnUNet_raw"]) / name
    info = json.loads((root / "dataset.json").read_text(encoding="utf-8"))
    channels = sorted(info["channel_names"], key=int)
    modality = declared_modality(info["channel_names"][channels[0]])
    ending = info["file_ending"]
    cases = []
    for sub in ("imagesTr", "imagesTs"):
        for first in sorted((root / sub).glob(f"*_0000{ending}")):
            stem = first.name[: -len(f"_0000{ending}")]
            files = tuple(str(root / sub / f"{stem}_{int(c):04d}{ending}") for c in channels)
            cases.append(Case(f"{name}__{sub}__{stem}", files, modality, name))
    return cases


def folder_cases(folder: Path, modality: str) -> List[Case]:
    """Every image file and every DICOM series folder below ``folder``."""
    found = [p for p in sorted(folder.rglob("*")) if is_image_file(p) and not p.name.lower().endswith(".raw")]
    dicom = [p for p in [folder, *sorted(d for d in folder.rglob("*") if d.is_dir())] if is_dicom_folder(p)]
    return [Case(_case_id(folder.name, p, folder), (str(p),), declared_modality(modality), folder.name)
            for p in found + dicom]


def datalist_cases(path: Path, modality: str, allow_partial: bool = False, log=print) -> List[Case]:
    """A MONAI-style datalist: {"training": [{"image": ...}], "validation": [...], ...}; relative paths are
    relative to the JSON's folder. The modality: an item's ``"modality"``, else the datalist's top-level
    ``"modality"``, else ``modality``. Files it names that do not exist: one error listing them, or (with
    ``allow_partial``) their cases skipped and reported."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SourceError(f"{path}: not a JSON datalist ({first_line(exc)})") from None
    if not isinstance(data, dict):
        raise SourceError(f"{path}: not a datalist (expected an object of lists, e.g. {{\"training\": [...]}})")
    top = data.get("modality")
    if top is not None and not _valid_modality(top):
        raise SourceError(f"{path}: top-level \"modality\" is {_kind(top)}; expected a name ({MODALITY_NAMES})")
    default = top if isinstance(top, str) else modality
    cases, missing = [], []
    for split, items in data.items():
        if not isinstance(items, list):
            continue
        for i, item in enumerate(items):
            where = f"{split}[{i}]"
            if isinstance(item, dict):
                if "image" not in item:
                    raise SourceError(f"{path}: {where} has no \"image\" field (each item: {{\"image\": "
                                      f"\"path\" or [\"path\", ...]}})")
                image, own = item["image"], item.get("modality", default)
                if "modality" in item and not _valid_modality(item["modality"]):
                    raise SourceError(f"{path}: {where}.modality is {_kind(item['modality'])}; expected a name "
                                      f"({MODALITY_NAMES})")
            elif isinstance(item, str):                     # MONAI's short form: the item is the image path
                image, own = item, default
            else:
                raise SourceError(f"{path}: {where} is {_kind(item)}; expected an object with an \"image\" field "
                                  f"or a path string")
            names = _image_paths(path, where, image)
            files = tuple(str((path.parent / f).resolve()) for f in names)
            field = f"{where}.image" if isinstance(image, str) else None
            missing += [(field or f"{where}.image[{k}]", f) for k, f in enumerate(files) if not Path(f).exists()]
            cases.append(Case(f"{path.stem}__{split}__{i:05d}", files, declared_modality(own), path.stem))
    if missing:
        listed = ", ".join(f"{w} {f}" for w, f in missing[:3]) + (
            f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        if not allow_partial:
            raise SourceError(f"{path}: names {len(missing)} missing file(s): {listed} (--allow_partial skips them)")
        log(f"{path}: skipping {len(missing)} missing file(s): {listed}")
        cases = [c for c in cases if all(Path(f).exists() for f in c.files)]
    return cases


def _kind(value) -> str:
    """How a JSON value reads in a message: its JSON type and the value itself."""
    name = {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list",
            dict: "an object", type(None): "null"}.get(type(value), type(value).__name__)
    return f"{name} ({json.dumps(value)[:60]})"


def _valid_modality(value) -> bool:
    """Any non-empty name: CT, MRI, auto, or an nnU-Net channel name (T1, FLAIR, ...: MRI-like)."""
    return isinstance(value, str) and bool(value.strip())


def _image_paths(path: Path, where: str, image) -> List[str]:
    """An item's ``image`` field as a list of path strings, or a one-line error naming the item and field."""
    if isinstance(image, str):
        if not image.strip():
            raise SourceError(f"{path}: {where}.image is an empty string; expected a file path")
        return [image]
    if isinstance(image, list) and image:
        for k, f in enumerate(image):
            if not isinstance(f, str) or not f.strip():
                raise SourceError(f"{path}: {where}.image[{k}] is {_kind(f)}; expected a file path string")
        return image
    raise SourceError(f"{path}: {where}.image is {_kind(image)}; expected a file path string or a non-empty list "
                      f"of them (one per channel)")


def source_modalities(specs: Sequence[str], modality: Union[str, Sequence[str]]) -> List[str]:
    """One declaration per ``-d`` entry from ``-modality``: one value for all, or one per entry."""
    values = [modality] if isinstance(modality, str) else list(modality)
    if len(values) not in (1, len(specs)):
        raise SourceError(f"-modality: {len(values)} values for {len(specs)} -d entries (give one for all, or one "
                          f"per entry)")
    for v in values:
        if v.upper() not in MODALITIES and v.lower() != AUTO:
            raise SourceError(f"-modality {v}: expected one of {', '.join(MODALITIES)}, {AUTO}")
    return values * len(specs) if len(values) == 1 else values


def resolve_sources(specs: Sequence[str], allow_partial: bool = False, modality: Union[str, Sequence[str]] = AUTO,
                    log=print) -> List[Case]:
    """Cases for every ``-d`` entry (collection name, nnU-Net dataset id/name, folder, datalist JSON);
    ``modality`` declares folders and datalists (one value, or one per entry; collections and nnU-Net
    datasets declare their own)."""
    cases: List[Case] = []
    for spec, modality in zip(specs, source_modalities(specs, modality)):
        path = Path(spec)
        if spec in available_collections():
            cases += collection_cases(spec, allow_partial, log)
        elif path.is_file() and path.suffix == ".json":
            cases += datalist_cases(path, modality, allow_partial, log)
        elif path.is_dir():
            cases += folder_cases(path, modality)
        elif spec.isdigit() or spec.startswith("Dataset"):
            cases += nnunet_dataset_cases(spec)
        else:
            raise SourceError(f"-d {spec}: not a collection ({', '.join(available_collections())}), an nnU-Net "
                              f"dataset id or name, an existing folder or a datalist .json")
    seen: Dict[str, Case] = {}
    for c in cases:
        if c.case_id in seen and seen[c.case_id].files != c.files:   # same name, other files: keep both
            n = 2
            while f"{c.case_id}__{n}" in seen:
                n += 1
            c = Case(f"{c.case_id}__{n}", c.files, c.modality, c.source)
        seen.setdefault(c.case_id, c)
    if not seen:
        raise SourceError(f"-d {' '.join(specs)}: no images found")
    return list(seen.values())
