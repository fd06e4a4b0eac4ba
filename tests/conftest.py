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


# Tests that read the same session fixture run in one pytest-xdist worker (``scripts/test.sh`` runs one per
# usable core, at most 4, with ``--dist loadgroup``): each worker would otherwise build the fixture's real runs again.
SHARED_GROUPS = {"mim_exports": "shared_runs", "mim_finetuned": "shared_runs", "demo_data": "demo_data"}


@pytest.hookimpl(tryfirst=True)          # before pytest-xdist's own hook reads the groups
def pytest_collection_modifyitems(config, items):
    for item in items:
        groups = {SHARED_GROUPS[name] for name in getattr(item, "fixturenames", ()) if name in SHARED_GROUPS}
        if groups:
            item.add_marker(pytest.mark.xdist_group(sorted(groups)[0]))


# Real runs shared by the tests that only read them, built once per test run (tests/helpers/shared_runs.py
# says what each holds). Never change their files: copy what a test must modify into its own tmp_path.

@pytest.fixture(scope="session")
def mim_exports(tmp_path_factory):
    """Dataset902 planned by stock nnU-Net and hybrid and swin 'tiny' exports pre-trained on it by mim_pretrain
    (``helpers.shared_runs.build_exports``)."""
    from helpers.shared_runs import build_exports
    return build_exports(tmp_path_factory.mktemp("mim_exports"))


@pytest.fixture(scope="session")
def mim_finetuned(mim_exports):
    """Both MiM trainers fine-tuned (fold 0) from ``mim_exports`` (the hybrid with --npz), their predictions of the
    test cases made without the pre-training files (``helpers.shared_runs.build_finetuned``)."""
    from helpers.shared_runs import build_finetuned
    return build_finetuned(mim_exports)


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory):
    """The demo's real CT, prepared once (``mim_nnunet.demo.data.prepare_demo_data``: the collection and
    Dataset991 under ``raw/``): ``reference``, ``collection``, ``dataset``. Tests never download: the
    archive comes from scripts/setup_env.sh."""
    from mim_nnunet.demo.data import cache_dir, demo_spec, prepare_demo_data
    spec = demo_spec()
    archive = cache_dir() / f"{spec['package']}-{spec['version']}.tar.gz"
    if not archive.is_file():
        pytest.fail(f"{archive} is missing: run scripts/setup_env.sh (mim_nnunet demo-data); tests never download")
    root = tmp_path_factory.mktemp("demo_data")
    return prepare_demo_data(root / "raw", root / "data", log=lambda *_: None)
