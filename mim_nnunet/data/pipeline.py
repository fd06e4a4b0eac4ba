"""``-d`` specs -> manifest -> fingerprint (cached) -> plan -> preprocessed store, under
``$nnUNet_preprocessed/MiM_<name>/``. Used by ``mim_plan_and_preprocess`` and ``mim_pretrain``."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Sequence

from ..atomic import write_json_atomic
from ..defaults import DEFAULT_GPU_MEMORY_TARGET_GB
from ..environment import require_nnunet_paths
from ..errors import MimError
from .fingerprint import compute_fingerprint
from .leakage import find_leakage
from .manifest import build_manifest
from .planner import plan_pretraining
from .preprocess import preprocess
from .sources import resolve_sources


@dataclass
class Prepared:
    folder: Path
    plan: Dict
    store: Path
    report: Dict


def collection_name(specs: Sequence[str]) -> str:
    return "+".join(re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(s).stem if s.endswith(".json") else Path(s).name or s)
                    for s in specs)


def prepare(specs: Sequence[str], name: Optional[str] = None, backbone: str = "hybrid", size: str = "base",
            gpu_memory_target_gb: float = DEFAULT_GPU_MEMORY_TARGET_GB, num_processes: int = 2,
            allow_partial: bool = False, modality: str = "CT", leakage_dataset: Optional[str] = None,
            leakage_fail: bool = False, log=print) -> Prepared:
    root = Path(require_nnunet_paths(("nnUNet_preprocessed",))["nnUNet_preprocessed"])
    name = name or collection_name(specs)
    folder = root / f"MiM_{name}"
    cases = resolve_sources(specs, allow_partial=allow_partial, modality=modality, log=log)
    log(f"{len(cases)} cases from {' '.join(specs)} -> {folder}")
    manifest = build_manifest(cases, num_threads=max(2, num_processes))
    write_json_atomic(folder / "manifest.json", manifest)

    if leakage_dataset:
        leaks = find_leakage(manifest, leakage_dataset)
        if leaks:
            msg = (f"{len(leaks)} image(s) of dataset {leakage_dataset} are in the pre-training data, e.g. "
                   f"{leaks[0]['file']} = {leaks[0]['case_id']}; downstream scores on them would be inflated")
            if leakage_fail:
                raise MimError(msg)
            log(f"WARNING: {msg}")
        else:
            log(f"leakage check: no image of dataset {leakage_dataset} is in the pre-training data")

    fp_path = folder / "fingerprint.json"
    fingerprint = json.loads(fp_path.read_text(encoding="utf-8")) if fp_path.is_file() else None
    if fingerprint is None or fingerprint.get("manifest_hash") != manifest["hash"]:
        fingerprint = compute_fingerprint(manifest, num_processes)
        write_json_atomic(fp_path, fingerprint)
    else:
        log(f"fingerprint unchanged (manifest {manifest['hash'][:12]}), reusing {fp_path}")
    for bad in fingerprint["bad_cases"]:
        log(f"skipping {bad['error']}")

    plan = plan_pretraining(fingerprint, backbone, size, gpu_memory_target_gb, name)
    write_json_atomic(folder / f"plan_{backbone}_{size}.json", plan)
    store = folder / f"store_{manifest['hash'][:12]}_{'x'.join(f'{s:g}' for s in plan['target_spacing'])}"
    report = preprocess(manifest, plan, store, num_processes)
    log(f"store {store}: {len(report['ok'])} cases ready ({report['done_before']} from an earlier run), "
        f"{len(report['skipped'])} skipped (listed in {store / 'report.json'})")
    return Prepared(folder, plan, store, report)
