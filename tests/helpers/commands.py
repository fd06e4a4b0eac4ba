"""The installed console scripts, as the tests run them (in subprocesses, like users do)."""

import importlib.util
import shutil
from pathlib import Path


def command(name: str) -> str:
    """Absolute path of an installed console script (fails clearly if the install is broken)."""
    path = shutil.which(name)
    assert path is not None, f"{name} is not on PATH; run the tests through scripts/test.sh"
    return path


REPO = Path(__file__).resolve().parents[2]          # the checkout the tests belong to
SCRIPTS = REPO / "scripts"


def load_script(name: str):
    """A script of ``scripts/`` (``name`` without ``.py``) imported as a module, to test its functions."""
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
