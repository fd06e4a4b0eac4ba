"""Fingerprint of a pre-training collection: geometry and intensities per case, per source, overall.

Shapes and spacings are measured after orientation to RAS, in SimpleITK's numpy order (z, y, x): the
order the preprocessed arrays are stored in. ``orientation`` records each file's own orientation.
"""

from __future__ import annotations

import hashlib
from typing import Dict, List, Sequence

import numpy as np
import SimpleITK as sitk

from ..common.parallel import map_cases
from .image_io import BadImage, read_case
from .leakage import content_signature
from .modality import detect_modality, header_modality, resolve_modality
from .preprocess import STORE_ORIENTATION

# 2: each case carries its content signature (the leakage guard compares those)
# 3: each case carries its detected modality and the one that normalises it
FINGERPRINT_FORMAT = 3
PERCENTILES = (0.5, 50.0, 99.5)
INTENSITY_SAMPLES = 10_000


def orientation_code(image) -> str:
    """DICOM orientation letters (where each index of x, y, z runs to, e.g. "RAS") of a ``sitk.Image`` or of a
    ``sitk.ImageFileReader`` that has read the header (``ReadImageInformation``)."""
    return sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(image.GetDirection())


def case_fingerprint(case: Dict) -> Dict:
    """One manifest case -> its fingerprint entry, or ``{"case_id", "error"}`` for a bad case."""
    try:
        image = read_case([f["path"] for f in case["files"]])
    except BadImage as exc:
        return {"case_id": case["case_id"], "error": str(exc)}
    original_orientation = orientation_code(image)
    image = sitk.DICOMOrient(image, STORE_ORIENTATION)      # measure in the order arrays are stored
    array = sitk.GetArrayViewFromImage(image)
    flat = array.reshape(-1, image.GetNumberOfComponentsPerPixel())
    seed = int(hashlib.sha256(case["case_id"].encode()).hexdigest()[:8], 16)   # deterministic sample
    idx = np.random.default_rng(seed).integers(0, flat.shape[0], min(INTENSITY_SAMPLES, flat.shape[0]))
    sample = flat[idx].astype(np.float64)
    detected, evidence = detect_modality(header_modality(case["files"][0]["path"]),
                                         float(np.percentile(sample[:, 0], 0.5)))
    modality, warning = resolve_modality(case["modality"], detected, evidence)
    return {
        "case_id": case["case_id"], "source": case["source"], "modality": modality,
        "modality_declared": case["modality"], "modality_detected": detected, "modality_evidence": evidence,
        "modality_warning": warning,
        "shape": list(image.GetSize())[::-1], "spacing": list(image.GetSpacing())[::-1],
        "orientation": original_orientation, "channels": image.GetNumberOfComponentsPerPixel(),
        "percentiles": {str(p): np.percentile(sample, p, axis=0).tolist() for p in PERCENTILES},
        "mean": sample.mean(axis=0).tolist(), "std": sample.std(axis=0).tolist(),
        "content": content_signature(image, STORE_ORIENTATION),
    }


def _summary(entries: Sequence[Dict]) -> Dict:
    spacing = np.array([e["spacing"] for e in entries])
    shape = np.array([e["shape"] for e in entries])
    return {
        "num_cases": len(entries),
        "median_spacing": np.median(spacing, axis=0).tolist(),
        "spacing_p10": np.percentile(spacing, 10, axis=0).tolist(),
        "spacing_p90": np.percentile(spacing, 90, axis=0).tolist(),
        "median_shape": np.median(shape, axis=0).tolist(),
        "min_shape": shape.min(axis=0).tolist(),
        "modalities": sorted({e["modality"] for e in entries}),
        "orientations": {o: sum(e["orientation"] == o for e in entries) for o in sorted({e["orientation"] for e in entries})},
        "intensity_p0.5_median": float(np.median([e["percentiles"]["0.5"][0] for e in entries])),
        "intensity_p99.5_median": float(np.median([e["percentiles"]["99.5"][0] for e in entries])),
    }


def compute_fingerprint(manifest: Dict, num_processes: int = 2) -> Dict:
    """Fingerprint every manifest case in parallel (progress bar); bad cases are listed, not fatal."""
    cases = manifest["cases"]
    results = map_cases(case_fingerprint, cases, num_processes, "Fingerprint")
    good = [r for r in results if "error" not in r]
    bad = [r for r in results if "error" in r]
    by_source: Dict[str, List[Dict]] = {}
    for e in good:
        by_source.setdefault(e["source"], []).append(e)
    return {
        "format": FINGERPRINT_FORMAT,
        "manifest_hash": manifest["hash"],
        "overall": _summary(good) if good else None,
        "per_source": {s: _summary(v) for s, v in sorted(by_source.items())},
        "cases": good,
        "bad_cases": bad,
    }
