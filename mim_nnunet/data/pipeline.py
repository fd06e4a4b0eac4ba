"""``-d`` specs -> manifest -> fingerprint (cached) -> plan (kept once written) -> preprocessed store, under
``$nnUNet_preprocessed/MiM_<name>/``. Used by ``mim_plan_and_preprocess`` and ``mim_pretrain``.

A plan is planned once and then read, like nnU-Net's plans: a user may edit it (lr, sizes, batch split)
and the edits hold. It is planned again when the data (manifest), the backbone, the size or the GPU
memory target change, or when asked (``--replan``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

from ..common.atomic import write_json_atomic
from ..common.errors import MimError
from ..common.layout import (
    FINGERPRINT,
    LEAKAGE_CHECKS,
    MANIFEST,
    plan_file,
    preprocessed_folder,
    store_folder,
)
from .fingerprint import FINGERPRINT_FORMAT, compute_fingerprint
from .intensity import CT_WINDOW, check_ct_window
from .leakage import find_leakage
from .manifest import build_manifest
from .modality import AUTO
from .planner import DEFAULT_GPU_MEMORY_TARGET_GB, PLAN_KEYS, plan_pretraining
from .preprocess import preprocess
from .sources import resolve_sources

# inputs of the planner: a plan planned from other inputs is planned again
PLANNED_FROM = ("manifest_hash", "backbone", "size", "gpu_memory_target_gb")
# plan values that shape the stored arrays besides the spacing (edited ones get a store of their own)
STORE_DEFINING = ("orientation", "intensity", "foreground", "store_dtype")


@dataclass
class Prepared:
    folder: Path
    plan: Dict
    store: Path
    report: Dict
    plan_edits: List[str]        # plan values that differ from what the planner computes now


def collection_name(specs: Sequence[str]) -> str:
    return "+".join(re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(s).stem if s.endswith(".json") else Path(s).name or s)
                    for s in specs)


def warn_modalities(fingerprint: Dict, manifest: Dict, log=print, shown: int = 5) -> None:
    """One line per case that looks unlike its declared modality (the first ``shown``, then a count), and the
    count of each detected modality where some were detected."""
    files = {c["case_id"]: c["files"][0]["path"] for c in manifest["cases"]}
    odd = [e for e in fingerprint["cases"] if e.get("modality_warning")]
    for e in odd[:shown]:
        log(f"WARNING: {files.get(e['case_id'], e['case_id'])}: {e['modality_warning']}")
    if len(odd) > shown:
        log(f"WARNING: {len(odd) - shown} more case(s) look unlike their declared modality (see 'modality_warning' "
            f"in the fingerprint)")
    detected = [e["modality"] for e in fingerprint["cases"] if e.get("modality_declared") == AUTO]
    if detected:
        counts = ", ".join(f"{detected.count(m)} {m}" for m in sorted(set(detected)))
        log(f"modality detected per case (-modality auto): {counts}")


def with_modalities(manifest: Dict, fingerprint: Dict) -> Dict:
    """The manifest with each case's modality the one that normalises it (declared, or detected for ``auto``)."""
    resolved = {e["case_id"]: e["modality"] for e in fingerprint["cases"]}
    return {**manifest, "cases": [{**c, "modality": resolved.get(c["case_id"], c["modality"])}
                                  for c in manifest["cases"]]}


def source_identity(specs: Sequence[str]) -> List[str]:
    """What ``-d`` named, where it lies: folders and datalists as absolute paths, other names as given."""
    return [str(Path(s).resolve()) if Path(s).exists() else s for s in specs]


def check_sources(folder: Path, specs: Sequence[str], name: Optional[str], log=print) -> List[str]:
    """The sources of ``folder``'s data; a folder prepared from other sources is refused when its name was
    derived from ``-d`` (two folders with the same basename would overwrite each other's fingerprint and
    plan), and replaced with a warning when ``-o name`` named it."""
    sources = source_identity(specs)
    path = folder / MANIFEST
    before = json.loads(path.read_text(encoding="utf-8")).get("sources") if path.is_file() else None
    if before is not None and before != sources:
        what = f"{folder} holds data prepared from {' '.join(before)}, not {' '.join(sources)}"
        if name is None:
            raise MimError(f"{what}: name this data with -data_name NAME (or delete {folder})")
        log(f"WARNING: {what}: -data_name {name} was asked for, so its fingerprint and pre-training plan are replaced")
    return sources


def plan_edits(plan: Dict, planned: Dict) -> List[str]:
    """Keys whose value in ``plan`` differs from ``planned``; in a record, ``key.entry`` (e.g.
    ``backbone_sizes.heads``) and also the key itself."""
    edits = []
    for key in PLAN_KEYS:
        if key == "explain":
            continue
        mine, fresh = plan.get(key), planned.get(key)
        if isinstance(mine, dict) and isinstance(fresh, dict):
            entries = [f"{key}.{k}" for k in sorted(set(mine) | set(fresh))
                       if json.dumps(mine.get(k)) != json.dumps(fresh.get(k))]
            edits += [key] + entries if entries else []
        elif json.dumps(mine) != json.dumps(fresh):
            edits.append(key)
    return edits


def load_or_plan(path: Path, fingerprint: Dict, backbone: str, size: str, gpu_memory_target_gb: float, name: str,
                 replan: bool = False, spacing_zyx: Optional[Sequence[float]] = None,
                 ct_window: Optional[Sequence[float]] = None, log=print):
    """(plan, edits): the plan in ``path`` when it was planned from the same inputs (edits kept), else a
    new one written there."""
    planned = plan_pretraining(fingerprint, backbone, size, gpu_memory_target_gb, name, spacing_zyx, ct_window)
    inputs = PLANNED_FROM + (("target_spacing",) if spacing_zyx is not None else ()) + \
        (("intensity",) if ct_window is not None else ())
    if path.is_file() and not replan:
        try:
            plan = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise MimError(f"{path}: not valid JSON ({exc}); fix it or plan again with --replan") from None
        missing = [k for k in PLAN_KEYS if k not in plan]
        if missing:
            log(f"pre-training plan {path}: written by an older mim-nnunet (no {', '.join(missing)}); planning again")
        elif all(plan[k] == planned[k] for k in inputs):
            edits = plan_edits(plan, planned)
            log(f"pre-training plan {path}: kept" + (f" (edited: {', '.join(edits)})" if edits else ""))
            return plan, edits
        else:
            log(f"pre-training plan {path}: planned for other data or settings; planning again")
    write_json_atomic(path, planned)
    return planned, []


def record_leakage_check(folder: Path, dataset: str, manifest_hash: str, images_found: int) -> None:
    """Add a leakage check's outcome to ``leakage_checks.json`` (one entry per dataset and manifest, the latest
    kept): export records and model cards report the checks run on the data a run trained on."""
    path = Path(folder) / LEAKAGE_CHECKS
    try:
        checks = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else []
    except (ValueError, OSError):
        checks = []
    checks = [c for c in checks if isinstance(c, dict) and
              (str(c.get("dataset")), c.get("manifest_hash")) != (str(dataset), manifest_hash)]
    checks.append({"dataset": str(dataset), "manifest_hash": manifest_hash, "images_found": int(images_found),
                   "date": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    write_json_atomic(path, checks)


def prepare(specs: Sequence[str], name: Optional[str] = None, backbone: str = "hybrid", size: str = "base",
            gpu_memory_target_gb: float = DEFAULT_GPU_MEMORY_TARGET_GB, num_processes: int = 2,
            allow_partial: bool = False, modality: Union[str, Sequence[str]] = AUTO,
            leakage_dataset: Optional[str] = None, leakage_fail: bool = False, replan: bool = False,
            spacing_xyz: Optional[Sequence[float]] = None, ct_window: Optional[Sequence[float]] = None,
            log=print) -> Prepared:
    """Prepare the data ``specs`` name (see the module's docstring); ``spacing_xyz`` (mm, x y z) replaces the
    planned target spacing, ``ct_window`` (HU) the default CT window."""
    folder = preprocessed_folder(name or collection_name(specs))
    sources = check_sources(folder, specs, name, log=log)
    name = name or collection_name(specs)
    cases = resolve_sources(specs, allow_partial=allow_partial, modality=modality, log=log)
    log(f"{len(cases)} cases from {' '.join(specs)} -> {folder}")
    manifest = {**build_manifest(cases, num_threads=max(2, num_processes)), "sources": sources}
    write_json_atomic(folder / MANIFEST, manifest)

    fp_path = folder / FINGERPRINT
    fingerprint = json.loads(fp_path.read_text(encoding="utf-8")) if fp_path.is_file() else None
    if fingerprint is None or fingerprint.get("manifest_hash") != manifest["hash"] \
            or fingerprint.get("format") != FINGERPRINT_FORMAT:
        fingerprint = compute_fingerprint(manifest, num_processes)
        write_json_atomic(fp_path, fingerprint)
    else:
        log(f"fingerprint unchanged (manifest {manifest['hash'][:12]}), reusing {fp_path}")

    if leakage_dataset:      # by content: the fingerprint holds every pre-training case's signature
        found = find_leakage(fingerprint, leakage_dataset)
        for unread in (f for f in found if f.get("error")):
            log(f"leakage check: could not read {unread['error']}")
        leaks = [f for f in found if not f.get("error")]
        if leaks:
            msg = (f"{len({f['file'] for f in leaks})} image(s) of dataset {leakage_dataset} are in the pre-training "
                   f"data, e.g. {leaks[0]['file']} = {leaks[0]['case_id']} ({leaks[0]['how']}); downstream scores "
                   f"on them would be inflated")
            if leakage_fail:
                raise MimError(msg)
            log(f"WARNING: {msg}")
        else:
            log(f"leakage check: no image of dataset {leakage_dataset} is in the pre-training data")
        record_leakage_check(folder, leakage_dataset, manifest["hash"], len({f["file"] for f in leaks}))
    for bad in fingerprint["bad_cases"]:
        log(f"skipping {bad['error']}")
    warn_modalities(fingerprint, manifest, log)

    spacing_zyx = list(spacing_xyz)[::-1] if spacing_xyz is not None else None
    plan, edits = load_or_plan(plan_file(folder, backbone, size), fingerprint, backbone, size, gpu_memory_target_gb,
                               name, replan, spacing_zyx, ct_window, log)
    # a store whose preprocessing differs from the default plan's (edited, or another CT window) gets its own
    # folder (a digest of the values)
    own = bool(set(edits) & set(STORE_DEFINING)) or (ct_window is not None and
                                                      check_ct_window(ct_window) != list(CT_WINDOW))
    store = store_folder(folder, manifest["hash"], plan["target_spacing"],
                         variant={k: plan[k] for k in STORE_DEFINING} if own else None)
    report = preprocess(with_modalities(manifest, fingerprint), plan, store, num_processes)
    log(f"store {store}: {len(report['ok'])} cases ready ({report['done_before']} from an earlier run), "
        f"{len(report['skipped'])} skipped (listed in {store / 'report.json'})")
    return Prepared(folder, plan, store, report, edits)
