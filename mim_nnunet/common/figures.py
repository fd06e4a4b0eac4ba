"""Matplotlib for files only (no window ever opens) and one atomic PNG writer for every picture."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .atomic import atomic_write  # noqa: E402

DPI = 80


def save_figure(fig, path: Path) -> Path:
    """Write ``fig`` as PNG atomically and close it."""
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=DPI))
    plt.close(fig)
    return Path(path)


__all__ = ["plt", "save_figure"]
