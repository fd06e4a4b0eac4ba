"""Intensities of pre-training data (the paper's Table 1 preprocessing): CT clipped to a HU window and scaled to
[0, 1], MRI z-scored per case and channel; and the foreground (body) mask that crop sampling draws
centres from. The plan records both rules; preprocessing applies them."""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..common.errors import MimError

# HU clip before scaling CT to [0, 1]; air (and padding) = 0. The paper's window; a plan may record another
# (mim_pretrain -ct_window), whose low end then plays air's part.
CT_WINDOW = (-1000.0, 1000.0)
# Foreground (body) of a case: CT above -500 HU (between air at -1000 and fat at about -100: lungs
# count, the air around the patient and the table foam do not), or above the window's low end when that
# is higher (the stored scale cannot tell HU below it apart); MRI above a low percentile of the case.
CT_BODY_HU = -500.0
MRI_FOREGROUND_PERCENTILE = 10.0
FOREGROUND_COORDINATES = 10_000        # voxel coordinates sampled per case, enough for random centres


def foreground_rule() -> Tuple[Dict, str]:
    """The plan's ``foreground`` record and its explanation."""
    rule = {"CT": {"above_hu": CT_BODY_HU}, "MRI": {"above_percentile": MRI_FOREGROUND_PERCENTILE},
            "coordinates_per_case": FOREGROUND_COORDINATES}
    why = (f"crop centres are drawn from the body: CT voxels above {CT_BODY_HU:g} HU (or above the window's low end "
           f"when that is higher), MRI voxels above the case's "
           f"{MRI_FOREGROUND_PERCENTILE:g}th percentile (channel 0); up to {FOREGROUND_COORDINATES} coordinates "
           f"per case are stored with it")
    return rule, why


def foreground_coordinates(array: np.ndarray, modality: str, scheme: Dict, rule: Dict,
                           rng: np.random.Generator) -> Tuple[np.ndarray, int]:
    """The foreground of a normalised case ``array`` ``(C, Z, Y, X)``: ``(K, 3)`` int32 (z, y, x) voxels, a
    random sample of at most ``rule['coordinates_per_case']`` of them (K = 0 when there is none), and the
    number of foreground voxels.

    CT's HU threshold is applied in the stored scale (the window maps HU linearly to [0, 1]); a window whose low
    end lies above it counts the voxels above that end (everything below it is stored as 0)."""
    if modality == "CT":
        lo, hi = scheme["CT"]["window"]
        mask = array[0] > (max(rule["CT"]["above_hu"], lo) - lo) / (hi - lo)
    else:
        mask = array[0] > np.percentile(array[0], rule["MRI"]["above_percentile"])
    coords = np.argwhere(mask)
    total = len(coords)
    if total > rule["coordinates_per_case"]:
        coords = coords[np.sort(rng.choice(total, rule["coordinates_per_case"], replace=False))]
    return coords.astype(np.int32), total


def check_ct_window(window: Sequence[float]) -> List[float]:
    """``[lo, hi]`` HU as floats; a one-line error unless two finite values with lo < hi."""
    values = [float(v) for v in window]
    if len(values) != 2 or not all(np.isfinite(values)) or values[0] >= values[1]:
        raise MimError(f"a CT window is two HU values, low < high; got {list(window)}")
    return values


def intensity_scheme(modalities: Sequence[str], ct_window: Optional[Sequence[float]] = None) -> Tuple[Dict, str]:
    """The plan's ``intensity`` record for the modalities of a collection, and its explanation;
    ``ct_window`` (HU) replaces the paper's :data:`CT_WINDOW`."""
    window = check_ct_window(CT_WINDOW if ct_window is None else ct_window)
    scheme = {}
    if "CT" in modalities:
        scheme["CT"] = {"scheme": "ct_window", "window": window, "background": 0.0}
    if "MRI" in modalities:
        scheme["MRI"] = {"scheme": "zscore", "background": "the normalised value of 0 per case"}
    given = "" if ct_window is None else f" (given with -ct_window; the default is {list(CT_WINDOW)})"
    why = (f"CT: clip to {window} HU{given} and scale to [0, 1] (0, air and all below the window, is the padding "
           f"value); MRI: z-score per case and channel")
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
