"""The manifest: every file of every case with its size and content hash. Its own hash names the
fingerprint cache and the preprocessed store, so changed data never reuses stale results."""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, Iterable

from tqdm import tqdm

from ..common.hashing import file_sha256, files_of
from .sources import Case


def _size(path: str) -> int:
    return sum(f.stat().st_size for f in files_of(path))


def build_manifest(cases: Iterable[Case], num_threads: int = 8) -> Dict:
    """``{"cases": [...], "hash": ...}``; each file entry holds path, size and sha256."""
    cases = list(cases)
    paths = sorted({f for c in cases for f in c.files})
    with ThreadPoolExecutor(max_workers=max(1, num_threads)) as pool:   # hashing releases the GIL
        hashes = dict(zip(paths, tqdm(pool.map(file_sha256, paths), total=len(paths), desc="Hashing files",
                                      disable=len(paths) < 20)))
    entries = [{"case_id": c.case_id, "source": c.source, "modality": c.modality,
                "files": [{"path": f, "size": _size(f), "sha256": hashes[f]} for f in c.files]}
               for c in sorted(cases, key=lambda c: c.case_id)]
    # the identity of the data is its content, not where it lies
    identity = [[e["case_id"], e["modality"], [f["sha256"] for f in e["files"]]] for e in entries]
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    return {"hash": digest, "num_cases": len(entries), "cases": entries}
