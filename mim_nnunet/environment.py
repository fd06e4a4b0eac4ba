"""Where our trainers live and whether the nnU-Net environment variables point at usable places.

nnU-Net 2.8 finds trainers outside its own package only through the folders listed in
``nnUNet_extTrainer``. It imports each module of such a folder by its bare name, so the folder must
not also be importable as a package (that would give a second copy of every class). We therefore
ship the top-level ``trainers/`` folder as plain data files (``<prefix>/share/mim_nnunet/trainers``)
and never put it on ``sys.path`` ourselves.
"""

from __future__ import annotations

import os
from importlib import metadata
from pathlib import Path
from typing import Iterable, Optional

from .defaults import EXT_TRAINER_ENV_VAR, NNUNET_ENV_VARS
from .errors import SetupError

DIST_NAME = "mim-nnunet"
TRAINERS_MARKER = "nnUNetTrainerSwinUNETR.py"
INSTALLED_TRAINERS_SUFFIX = ("share", "mim_nnunet", "trainers")


def _source_tree_trainers() -> Optional[Path]:
    # An editable install or a source checkout: trainers/ sits next to the package folder.
    candidate = Path(__file__).resolve().parent.parent / "trainers"
    return candidate if (candidate / TRAINERS_MARKER).is_file() else None


def _installed_trainers() -> Optional[Path]:
    try:
        dist = metadata.distribution(DIST_NAME)
    except metadata.PackageNotFoundError:
        return None
    for f in dist.files or ():
        parts = Path(str(f)).parts
        if parts[-1] == TRAINERS_MARKER and tuple(parts[-4:-1]) == INSTALLED_TRAINERS_SUFFIX:
            folder = Path(dist.locate_file(f)).resolve().parent
            if (folder / TRAINERS_MARKER).is_file():
                return folder
    return None


def trainers_dir() -> Path:
    """The folder to put in ``nnUNet_extTrainer``: the one that belongs to the imported package (the
    source tree's when running from a checkout or an editable install, else the installed copy)."""
    folder = _source_tree_trainers() or _installed_trainers()
    if folder is None:
        raise SetupError(
            f"cannot find the mim-nnunet trainers folder (no installed share/mim_nnunet/trainers and no "
            f"source-tree trainers/ next to {Path(__file__).resolve().parent}); reinstall with 'pip install .'"
        )
    return folder


def require_nnunet_paths(names: Iterable[str] = tuple(NNUNET_ENV_VARS)) -> dict:
    """Return ``{name: path}`` for nnU-Net's folder variables; one-line error for the first unset one."""
    found = {}
    for name in names:
        value = os.environ.get(name)
        if not value:
            raise SetupError(
                f"{name} is not set: set it to {NNUNET_ENV_VARS[name]}, e.g. export {name}=/data/{name}"
            )
        found[name] = value
    return found


def require_ext_trainer() -> Path:
    """Check that ``nnUNet_extTrainer`` lists our trainers folder; return that folder."""
    folder = trainers_dir()
    value = os.environ.get(EXT_TRAINER_ENV_VAR)
    hint = f'export {EXT_TRAINER_ENV_VAR}="{folder}"  (or: eval "$(mim_nnunet env)")'
    if not value:
        raise SetupError(f"{EXT_TRAINER_ENV_VAR} is not set, so nnU-Net cannot find our trainers: {hint}")
    listed = [p for p in value.split(os.pathsep) if p.strip()]
    if not any(Path(p).resolve() == folder.resolve() for p in listed):
        raise SetupError(
            f"{EXT_TRAINER_ENV_VAR}={value} does not list the mim-nnunet trainers folder {folder}: {hint}"
        )
    return folder


def shell_exports() -> str:
    """Lines for ``eval "$(mim_nnunet env)"``: prepend our trainers folder to nnUNet_extTrainer once."""
    folder = str(trainers_dir())
    current = [p for p in os.environ.get(EXT_TRAINER_ENV_VAR, "").split(os.pathsep) if p.strip()]
    if folder not in current:
        current.insert(0, folder)
    return f"export {EXT_TRAINER_ENV_VAR}='{os.pathsep.join(current)}'"
