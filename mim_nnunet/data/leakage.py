"""Leakage guard: images of a downstream nnU-Net dataset that also sit in the pre-training data.

Evaluating on cases the encoder was pre-trained on inflates downstream scores. Files are compared by what
they hold, not by their bytes: a copy re-compressed, saved as ``.nii``, as another format or with another
axis order is the same image. Each image gets a :func:`content_signature` (computed for pre-training cases
by the fingerprint, which decodes every case anyway): a hash of its voxels after orientation to the store's
RAS order, a near-duplicate signature (shape, spacing and a 4^3 block-mean thumbnail) that also
catches re-quantised or slightly altered copies, and a sketch of the image's runs of voxels that finds a
copy cropped (along any axis) or with slices removed, on another grid.

**The runs sketch.** Every run of :data:`RUN` consecutive voxels along x (the array's last axis, after
orientation) whose values are not all equal is hashed (exact values: a copy keeps them, unrelated scans
share practically none; constant runs, such as padding or air clipped to a floor, are left out). The
:data:`SKETCH` smallest distinct hashes are kept (a bottom-k sketch). A crop or a copy with slices removed
keeps almost all of its runs, so the share of one image's runs found in the other (estimated from the
sketches: of the smaller image's hashes below the larger one's largest, the share also in the larger one's
sketch) is near 1; for unrelated images it is near 0. A crop much smaller than the other image leaves few
hashes to compare (:data:`MIN_SAMPLES`): below about a tenth of the other's runs it is not judged.
"""

from __future__ import annotations

import hashlib
from typing import Dict, List, Optional, Sequence

import numpy as np
import SimpleITK as sitk

from .image_io import BadImage, read_case
from .sources import nnunet_dataset_cases

THUMBNAIL = 4                 # block means per axis (64 numbers per case in the fingerprint)
# near-duplicate: same shape, spacing within this fraction, and thumbnails apart by less than this
# fraction of the thumbnail's range (mean absolute difference)
SPACING_TOLERANCE = 1e-3
THUMBNAIL_TOLERANCE = 5e-3
RUN = 8                       # consecutive voxels along x hashed together
SKETCH = 128                  # smallest run hashes kept per image (128 integers per case in the fingerprint)
CONTAINMENT = 0.5             # share of one image's runs in the other above which it is a near-duplicate
MIN_SAMPLES = 16              # comparable hashes needed before the share is judged
_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)


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
            "thumbnail": [round(float(v), 4) for v in blocks.reshape(-1)], "runs": runs_sketch(array)}


def _mix(h: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: spreads a uint64 hash over all bits (so the smallest ones are a fair sample)."""
    h = h ^ (h >> np.uint64(30))
    h = h * np.uint64(0xBF58476D1CE4E5B9)
    h = h ^ (h >> np.uint64(27))
    h = h * np.uint64(0x94D049BB133111EB)
    return h ^ (h >> np.uint64(31))


def runs_sketch(array: np.ndarray, chunk: int = 8) -> List[int]:
    """The :data:`SKETCH` smallest distinct hashes of the non-constant runs of :data:`RUN` voxels along x of a
    ``(z, y, x[, c])`` float32 array (channels as further slices), ascending."""
    array = np.ascontiguousarray(array, dtype=np.float32)
    if array.ndim == 4:
        array = np.ascontiguousarray(np.moveaxis(array, 3, 0).reshape(-1, *array.shape[1:3]))
    words = array.view(np.uint32)
    n = words.shape[-1] - RUN + 1
    kept = np.empty(0, np.uint64)
    if n <= 0:
        return []
    with np.errstate(over="ignore"):
        for start in range(0, words.shape[0], chunk):
            w = words[start:start + chunk].astype(np.uint64)
            h = np.zeros(w.shape[:-1] + (n,), np.uint64)
            varied = np.zeros(h.shape, bool)
            for j in range(RUN):
                h = h * _MULTIPLIER + w[..., j:j + n]
                varied |= w[..., j:j + n] != w[..., :n]
            h = _mix(h[varied])
            if h.size > 4 * SKETCH:
                h = np.partition(h, 4 * SKETCH)[:4 * SKETCH]
            kept = np.unique(np.concatenate([kept, h]))[:SKETCH]
    return [int(v) for v in kept]


def runs_shared(a: Sequence[int], b: Sequence[int]) -> Optional[float]:
    """The larger of the two estimated shares of one image's runs found in the other, from their sketches
    (see the module's docstring); None where neither direction has :data:`MIN_SAMPLES` hashes to compare."""
    best = None
    for small, big in ((a, b), (b, a)):
        if not small or not big:
            continue
        # a full sketch holds every hash of its image up to its largest; a short one holds them all
        limit = max(big) if len(big) >= SKETCH else float("inf")
        comparable = [h for h in small if h <= limit]
        if len(comparable) >= MIN_SAMPLES:
            share = len(set(comparable) & set(big)) / len(comparable)
            best = share if best is None else max(best, share)
    return best


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
        else:
            share = runs_shared(signature.get("runs") or [], content.get("runs") or [])
            if share is not None and share >= CONTAINMENT:
                found.append({"case_id": entry["case_id"], "how": f"near-duplicate ({share:.0%} of the voxel runs "
                                                                   f"of one are in the other: a crop, or a copy "
                                                                   f"with slices removed)"})
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
