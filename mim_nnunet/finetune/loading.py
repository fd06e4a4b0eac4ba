"""Files nnU-Net is asked to open for our trainers, opened safely first.

nnU-Net 2.8 unpickles with ``weights_only=False`` in ``load_pretrained_weights`` (``nnUNetv2_train
-pretrained_weights FILE``) and ``nnUNetTrainer.load_checkpoint`` (``--c``, ``--val``, ``--val_best``): a
pickled ``__reduce__`` in such a file would run. Every trainer of ours opens the file first with
:func:`mim_nnunet.common.safe_load.load_tensors_file`, allowing only the numpy scalar types nnU-Net's own
checkpoints log, and stops in one line (exit status 2) when it needs more, before nnU-Net's loader sees it.
(``nnUNetv2_predict`` unpickles ``checkpoint_final.pth`` before it looks up the trainer: no trainer can
check it first, so ``mim_nnunet check-weights`` checks a model folder from elsewhere, :func:`check_weights`.)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, List, Tuple

import torch

from ..common.errors import MimError, first_line
from ..common.safe_load import NUMPY_SCALAR_TYPES, SAFE_FILE_SOURCES, UnsafeFileError, load_tensors_file

PRETRAINED_REMEDY = SAFE_FILE_SOURCES + " (a checkpoint_final.pth written by nnUNetv2_train also loads)"
CHECKPOINT_REMEDY = ("A checkpoint written by nnUNetv2_train holds only tensors and plain values: replace it with a "
                     "copy you trust, or delete it and train the fold again")


def load_nnunet_checkpoint(path: os.PathLike, map_location="cpu", remedy: str = CHECKPOINT_REMEDY,
                           mmap: bool = False) -> dict:
    """An nnU-Net checkpoint (``network_weights``, ``trainer_name``, ``init_args``, ...) or a
    ``-pretrained_weights`` file, loaded without running code; one-line :class:`MimError` otherwise."""
    try:
        return load_tensors_file(path, allow=NUMPY_SCALAR_TYPES, map_location=map_location, mmap=mmap,
                                 remedy=remedy)
    except UnsafeFileError:
        raise
    except FileNotFoundError:
        raise MimError(f"{path}: checkpoint not found") from None
    except Exception as exc:  # truncated zip, not a PyTorch file, ...
        raise MimError(f"{path}: not a readable nnU-Net checkpoint ({first_line(exc)})") from None


def check_nnunet_file(path: os.PathLike, remedy: str = CHECKPOINT_REMEDY) -> None:
    """Raise a one-line :class:`MimError` unless ``path`` loads safely (tensors mapped, not read)."""
    load_nnunet_checkpoint(path, map_location="cpu", remedy=remedy, mmap=True)


def check_weights(path: os.PathLike) -> List[Tuple[Path, str]]:
    """``mim_nnunet check-weights``: (file, "ok" or the one-line reason) for a weights file, or for every
    ``.pth`` under a model folder (``fold_*/checkpoint_*.pth``)."""
    path = Path(path)
    if not path.exists():
        raise MimError(f"{path}: not found")
    files = sorted(path.rglob("*.pth")) if path.is_dir() else [path]
    if not files:
        raise MimError(f"{path}: no .pth file in this folder")
    results = []
    for f in files:
        try:
            check_nnunet_file(f, remedy=PRETRAINED_REMEDY if path.is_file() else CHECKPOINT_REMEDY)
            results.append((f, "ok"))
        except MimError as exc:
            results.append((f, str(exc)))
    return results


def guard_pretrained_weights(refuse: Callable[[str], None]) -> None:
    """Make ``nnUNetv2_train -pretrained_weights FILE`` check FILE first: nnU-Net's ``load_pretrained_weights``
    (as ``nnunetv2.run.run_training`` calls it) is wrapped so that an unsafe or unreadable file goes to
    ``refuse(message)`` (a trainer's one-line stop) and never to nnU-Net's unpickler."""
    import nnunetv2.run.load_pretrained_weights as own
    import nnunetv2.run.run_training as entry

    original = getattr(own.load_pretrained_weights, "__wrapped__", own.load_pretrained_weights)

    def load_pretrained_weights(network: torch.nn.Module, fname: str, verbose: bool = False):
        try:
            check_nnunet_file(fname, remedy=PRETRAINED_REMEDY)
        except MimError as exc:
            refuse(str(exc))
            raise         # refuse() ends the run; never fall through to the unpickler
        return original(network, fname, verbose=verbose)

    load_pretrained_weights.__wrapped__ = original
    own.load_pretrained_weights = load_pretrained_weights
    entry.load_pretrained_weights = load_pretrained_weights
