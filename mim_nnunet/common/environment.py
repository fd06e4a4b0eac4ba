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
from typing import Iterable

from .errors import SetupError

# nnU-Net's environment variables and what each must point at (used for one-line errors).
NNUNET_ENV_VARS = {
    "nnUNet_raw": "the folder that holds nnU-Net raw datasets (DatasetXXX_Name/imagesTr, labelsTr, dataset.json)",
    "nnUNet_preprocessed": "the folder where nnU-Net writes preprocessed data and plans",
    "nnUNet_results": "the folder where nnU-Net writes trained models",
}
EXT_TRAINER_ENV_VAR = "nnUNet_extTrainer"
DIST_NAME = "mim-nnunet"
TRAINERS_MARKER = "nnUNetTrainerSwinUNETR.py"


def shipped_folder(relative: str, marker: str) -> Path:
    """A top-level folder of the project shipped with the package (``trainers``, ``plans/collections``).

    The source tree's copy when the package is imported from a checkout or an editable install,
    else the installed copy under ``<prefix>/share/mim_nnunet/<relative>``. ``marker`` is a file
    that must be in it.
    """
    source = Path(__file__).resolve().parents[2] / relative
    if (source / marker).is_file():
        return source
    try:
        dist = metadata.distribution(DIST_NAME)
    except metadata.PackageNotFoundError:
        dist = None
    wanted = ("share", "mim_nnunet", *Path(relative).parts, marker)
    for f in (dist.files or ()) if dist else ():
        if tuple(Path(str(f)).parts[-len(wanted):]) == wanted:
            folder = Path(dist.locate_file(f)).resolve().parent
            if (folder / marker).is_file():
                return folder
    raise SetupError(
        f"cannot find the mim-nnunet folder {relative}/ (neither installed under share/mim_nnunet nor next "
        f"to {Path(__file__).resolve().parents[1]}); reinstall with 'pip install .'"
    )


def trainers_dir() -> Path:
    """The folder to put in ``nnUNet_extTrainer`` (see :func:`shipped_folder`)."""
    return shipped_folder("trainers", TRAINERS_MARKER)


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
