"""Leakage guard: images of a downstream nnU-Net dataset that also sit in the pre-training data.

Evaluating on cases the encoder was pre-trained on inflates downstream scores; content hashes find
them whatever the files are called."""

from __future__ import annotations

from typing import Dict, List

from ..common.hashing import file_sha256
from .sources import nnunet_dataset_cases


def find_leakage(manifest: Dict, dataset: str) -> List[Dict]:
    """Files of nnU-Net dataset ``dataset`` whose content is in ``manifest``: [{"file", "case_id"}]."""
    by_hash = {f["sha256"]: c["case_id"] for c in manifest["cases"] for f in c["files"]}
    found = []
    for case in nnunet_dataset_cases(dataset):
        for f in case.files:
            h = file_sha256(f)
            if h in by_hash:
                found.append({"file": f, "case_id": by_hash[h]})
    return found
