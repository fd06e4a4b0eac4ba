import os
import sys
from pathlib import Path

import pytest

# Test files mirror the packages (tests/<package>/test_<module>.py) and are imported by pytest's
# importlib mode; shared helpers live in tests/helpers, importable as ``helpers``.
sys.path.insert(0, str(Path(__file__).resolve().parent))

NNUNET_VARS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")


@pytest.fixture
def nnunet_dirs(tmp_path, monkeypatch):
    """Fresh nnUNet_raw/_preprocessed/_results under tmp_path, exported in this process."""
    dirs = {}
    for name in NNUNET_VARS:
        path = tmp_path / name
        path.mkdir()
        monkeypatch.setenv(name, str(path))
        dirs[name] = path
    return dirs


@pytest.fixture
def clean_env(monkeypatch):
    """os.environ without any nnU-Net variable; returns a copy for subprocesses."""
    for name in NNUNET_VARS + ("nnUNet_extTrainer",):
        monkeypatch.delenv(name, raising=False)
    return dict(os.environ)
