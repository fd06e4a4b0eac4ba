"""Intensity normalisation of pre-training data (MIM_SPEC.md section 6): CT clipped to a HU window and
scaled to [0, 1], MRI z-scored per case and channel. The plan records the scheme; preprocessing applies it."""

from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import numpy as np

CT_WINDOW = (-1000.0, 1000.0)           # HU clip before scaling CT to [0, 1]; air (and padding) = 0


def intensity_scheme(modalities: Sequence[str]) -> Tuple[Dict, str]:
    """The plan's ``intensity`` record for the modalities of a collection, and its explanation."""
    scheme = {}
    if "CT" in modalities:
        scheme["CT"] = {"scheme": "ct_window", "window": list(CT_WINDOW), "background": 0.0}
    if "MRI" in modalities:
        scheme["MRI"] = {"scheme": "zscore", "background": "the normalised value of 0 per case"}
    why = (f"CT: clip to {list(CT_WINDOW)} HU and scale to [0, 1] (air = 0 is the padding value); "
           f"MRI: z-score per case and channel")
    return scheme, why


def apply_intensity(array: np.ndarray, modality: str, scheme: Dict) -> Tuple[np.ndarray, List[float]]:
    """``(C, Z, Y, X)`` float -> (normalised array, background value per channel), by the plan's
    ``intensity`` record ``scheme``."""
    if modality == "CT":
        lo, hi = scheme["CT"]["window"]
        return (np.clip(array, lo, hi) - lo) / (hi - lo), [0.0] * array.shape[0]
    out, background = np.empty_like(array), []
    for c in range(array.shape[0]):
        mean, std = float(array[c].mean()), float(array[c].std())
        std = std if std > 0 else 1.0
        out[c] = (array[c] - mean) / std
        background.append((0.0 - mean) / std)
    return out, background
