import os
import shutil
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


@pytest.fixture(scope="module")
def module_tmp(tmp_path_factory):
    """``tmp_path_factory.mktemp`` for a module's shared fixtures, whose folders go when the module's tests end.

    pytest would keep them to the session's end: together a few GB, more than CI's disk has spare
    (pytest.ini already drops each passed test's own tmp_path).
    """
    made = []

    def make(name: str):
        made.append(tmp_path_factory.mktemp(name))
        return made[-1]

    yield make
    for path in made:
        shutil.rmtree(path, ignore_errors=True)
