"""Matplotlib for files only (no window ever opens), one atomic PNG writer for every picture, and the
radiological view of an axial slice."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .atomic import atomic_write  # noqa: E402

DPI = 80


# The radiological view of an axial slice: anterior at the top, the patient's right on the viewer's left. In
# a (z, y, x) array of DICOM orientation code "LPS" (letter = where each index of x, y, z runs to) the rows run
# to posterior and the columns to the patient's left, so the slice is drawn as it is (matplotlib's row 0 at the
# top).
RADIOLOGICAL_ORIENTATION = "LPS"


def radiological(slice_yx: np.ndarray, orientation: str) -> np.ndarray:
    """An axial slice ``(Y, X)`` of a (z, y, x) array in DICOM orientation ``orientation`` (e.g. the
    pre-training store's "RAS"), flipped so that ``imshow`` shows it in the radiological view."""
    orientation = orientation.upper()
    if len(orientation) != 3 or orientation[0] not in "LR" or orientation[1] not in "AP" or orientation[2] not in "SI":
        raise ValueError(f"radiological view: orientation {orientation!r} is not axial (x in L/R, y in A/P, z in S/I)")
    rows = -1 if orientation[1] != RADIOLOGICAL_ORIENTATION[1] else 1
    cols = -1 if orientation[0] != RADIOLOGICAL_ORIENTATION[0] else 1
    return slice_yx[::rows, ::cols]


def save_figure(fig, path: Path) -> Path:
    """Write ``fig`` as PNG atomically and close it."""
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=DPI))
    plt.close(fig)
    return Path(path)


__all__ = ["RADIOLOGICAL_ORIENTATION", "plt", "radiological", "save_figure"]
