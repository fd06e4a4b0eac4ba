"""Leakage guard: images of a downstream nnU-Net dataset that also sit in the pre-training data.

Evaluating on cases the encoder was pre-trained on inflates downstream scores. Files are compared by what
they hold, not by their bytes: a copy re-compressed, saved as ``.nii``, as another format or with another
axis order is the same image. Each image gets a :func:`content_signature` (computed for pre-training cases
by the fingerprint, which decodes every case anyway): a hash of its voxels after orientation to the store's
RAS order, and a near-duplicate signature (shape, spacing and a 4^3 block-mean thumbnail) that also
catches re-quantised or slightly altered copies.
"""

from __future__ import annotations

import hashlib
from typing import Dict, List, Sequence

import numpy as np
import SimpleITK as sitk

from .image_io import BadImage, read_case
from .sources import nnunet_dataset_cases

THUMBNAIL = 4                 # block means per axis (64 numbers per case in the fingerprint)
# near-duplicate: same shape, spacing within this fraction, and thumbnails apart by less than this
# fraction of the thumbnail's range (mean absolute difference)
SPACING_TOLERANCE = 1e-3
THUMBNAIL_TOLERANCE = 5e-3


def content_signature(image: sitk.Image, orientation: str = "RAS") -> Dict:
    """``{"voxels": sha256, "shape", "spacing", "thumbnail"}`` of an image (all channels), independent of its
    file format, compression and axis order (oriented to ``orientation``; values as float32)."""
    image = sitk.DICOMOrient(image, orientation)
    array = sitk.GetArrayFromImage(image).astype(np.float32)          # (z, y, x[, c])
    digest = hashlib.sha256(str(array.shape).encode())
    digest.update(np.ascontiguousarray(array).tobytes())
    blocks = array.reshape(array.shape[:3] + (-1,)).mean(axis=3)
    for axis in range(3):
        parts = np.array_split(blocks, min(THUMBNAIL, blocks.shape[axis]), axis=axis)
        blocks = np.concatenate([p.mean(axis=axis, keepdims=True) for p in parts], axis=axis)
    return {"voxels": digest.hexdigest(), "shape": list(array.shape), "spacing": list(image.GetSpacing())[::-1],
            "thumbnail": [round(float(v), 4) for v in blocks.reshape(-1)]}


def near_duplicate(a: Dict, b: Dict) -> bool:
    """Same shape and spacing, and block-mean thumbnails that differ by < THUMBNAIL_TOLERANCE of their range."""
    if a["shape"] != b["shape"] or not np.allclose(a["spacing"], b["spacing"], rtol=SPACING_TOLERANCE):
        return False
    ta, tb = np.asarray(a["thumbnail"]), np.asarray(b["thumbnail"])
    if ta.shape != tb.shape:
        return False
    scale = max(float(np.ptp(ta)), float(np.ptp(tb)), 1e-6)
    return float(np.abs(ta - tb).mean()) < THUMBNAIL_TOLERANCE * scale


def match(signature: Dict, known: Sequence[Dict]) -> List[Dict]:
    """Entries of ``known`` (each with ``case_id`` and ``content``) the signature matches, with how."""
    found = []
    for entry in known:
        content = entry.get("content")
        if not content:
            continue
        if content["voxels"] == signature["voxels"]:
            found.append({"case_id": entry["case_id"], "how": "identical voxels"})
        elif near_duplicate(signature, content):
            found.append({"case_id": entry["case_id"], "how": "near-duplicate (same grid, thumbnail within "
                                                               f"{THUMBNAIL_TOLERANCE:.1%} of its range)"})
    return found


def find_leakage(fingerprint: Dict, dataset: str) -> List[Dict]:
    """Images of nnU-Net dataset ``dataset`` whose content is among the fingerprint's cases:
    ``[{"file", "case_id", "how"}]``; a downstream image that cannot be read is listed with ``"error"``."""
    found = []
    for case in nnunet_dataset_cases(dataset):
        for f in case.files:
            try:
                signature = content_signature(read_case([f]))
            except BadImage as exc:
                found.append({"file": f, "case_id": None, "how": None, "error": str(exc)})
                continue
            found += [{"file": f, **m} for m in match(signature, fingerprint["cases"])]
    return found
