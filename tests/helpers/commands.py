"""The installed console scripts, as the tests run them (in subprocesses, like users do)."""

import shutil
from pathlib import Path


def command(name: str) -> str:
    """Absolute path of an installed console script (fails clearly if the install is broken)."""
    path = shutil.which(name)
    assert path is not None, f"{name} is not on PATH; run the tests through scripts/test.sh"
    return path


REPO = Path(__file__).resolve().parents[2]          # the checkout the tests belong to
SCRIPTS = REPO / "scripts"
