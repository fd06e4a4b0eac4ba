import os
import shutil

import pytest

NNUNET_VARS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: runs real nnU-Net commands (minutes on CPU)")


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


def command(name: str) -> str:
    """Absolute path of an installed console script (fails clearly if the install is broken)."""
    path = shutil.which(name)
    assert path is not None, f"{name} is not on PATH; run the tests through scripts/test.sh"
    return path
