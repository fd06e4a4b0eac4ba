"""The one way this project opens a PyTorch file (``.pt``/``.pth``): ``torch.load(weights_only=True)``, which
rebuilds tensors and plain containers and refuses anything else, so no code in a file is ever run. A file
that needs more (a pickled class or function, the usual carrier of code) is refused in one line that says
what it holds and how to get a safe file.

Types a file may hold beyond tensors and plain values are allowed by name, per caller, through
``torch.serialization.safe_globals``: nnU-Net's checkpoints log numpy scalars (:data:`NUMPY_SCALAR_TYPES`),
the MiM release pickles an ``argparse.Namespace``.
"""

from __future__ import annotations

import os
import pickle
import pickletools
import re
import warnings
from typing import Optional, Sequence

import numpy as np
import torch

from .errors import MimError

# where a user gets a file this project can load without running code
SAFE_FILE_SOURCES = ("use weights saved as plain tensors: a mim-nnunet export (.safetensors with its .json), "
                     "`mim_nnunet expand-weights` for nnUNetv2_train -pretrained_weights, or "
                     "`mim_nnunet import-official` for the MiM authors' release")


class UnsafeFileError(MimError):
    """A file that holds code or Python objects beyond tensors and plain values: never loaded."""


def _numpy_scalar_types() -> list:
    scalar = getattr(np, "_core", getattr(np, "core", None)).multiarray.scalar   # numpy 2 moved core to _core
    dtypes = [type(np.dtype(t)) for t in ("float16", "float32", "float64", "int8", "int16", "int32", "int64",
                                          "uint8", "bool")]
    return [scalar, np.dtype, *dtypes]


# nnU-Net's checkpoints (checkpoint_final/latest/best.pth) hold numpy scalars in their training log
# (losses, Dice, the EMA): rebuilding one from its dtype and bytes runs no code
NUMPY_SCALAR_TYPES = _numpy_scalar_types()


# pickle instructions that name or call Python objects (how code travels in a pickle); a file that fails to
# load for any other reason is damaged or no pickle at all, and is reported as such by the caller
OBJECT_OPCODES = ("GLOBAL", "STACK_GLOBAL", "INST", "OBJ", "NEWOBJ", "NEWOBJ_EX", "REDUCE", "BUILD", "EXT1", "EXT2",
                  "EXT4")
_OBJECT_CODES = frozenset(ord(op.code[0]) for op in pickletools.opcodes if op.name in OBJECT_OPCODES)


def _object_instruction(path: os.PathLike) -> Optional[str]:
    """The first instruction of a plain pickle file that names or calls a Python object, read with
    :func:`pickletools.genops` (which decodes the stream and runs nothing); None when there is none or the
    file is no readable pickle."""
    try:
        with open(path, "rb") as fh:
            for op, arg, _ in pickletools.genops(fh):
                if op.name in OBJECT_OPCODES:
                    return f"{op.name} {arg}".strip() if isinstance(arg, str) else op.name
    except Exception:           # damaged, truncated or not a pickle: not a refusal
        return None
    return None


def what_it_holds(exc: BaseException, path: Optional[os.PathLike] = None) -> str:
    """What PyTorch's weights-only unpickler found, in a few words (never PyTorch's advice to load unsafely)."""
    text = str(exc)
    found = re.search(r"GLOBAL ([\w.]+)", text)
    if found:
        return f"a reference to {found.group(1)}"
    instruction = _object_instruction(path) if path is not None else None
    if instruction:
        return f"pickle instruction {instruction}, which names or calls a Python object"
    found = re.search(r"Unsupported operand (\d+)", text)
    if found:
        return f"pickle instruction {found.group(1)}, which a file of tensors does not use"
    return "something other than tensors and plain values"


def is_refusal(exc: BaseException, path: Optional[os.PathLike] = None) -> bool:
    """True when ``torch.load(weights_only=True)`` failed because the file names or calls Python objects, not
    because it is damaged or no pickle. PyTorch names a reference it refuses; an instruction it cannot read
    (a plain pickle's framing, garbage) is a refusal only when the file itself holds an object instruction."""
    text = str(exc)
    if not (isinstance(exc, pickle.UnpicklingError) and "Weights only load failed" in text):
        return False
    operand = re.search(r"Unsupported operand (\d+)", text)
    if operand is None or int(operand.group(1)) in _OBJECT_CODES:
        return True
    return path is not None and _object_instruction(path) is not None


def load_tensors_file(path: os.PathLike, *, allow: Sequence = (), map_location="cpu", mmap: bool = False,
                      remedy: str = SAFE_FILE_SOURCES):
    """``torch.load(path, weights_only=True)`` with the types in ``allow`` allowed by name.

    Raises :class:`UnsafeFileError` (one line: the file, what it holds, ``remedy``) when the content needs
    more; other failures (missing or damaged file) propagate unchanged for the caller to word. ``mmap``
    maps the tensors instead of reading them (a cheap check of a large file); files in PyTorch's legacy
    format cannot be mapped and are read.
    """
    try:
        with warnings.catch_warnings(), torch.serialization.safe_globals(list(allow)):
            warnings.simplefilter("ignore", UserWarning)     # "pickle protocol 4 ..." on files saved by others
            try:
                return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
            except RuntimeError as exc:
                if mmap and "mmap can only be used" in str(exc):
                    return torch.load(path, map_location=map_location, weights_only=True)
                raise
    except Exception as exc:
        if is_refusal(exc, path):
            raise UnsafeFileError(f"{path}: refused: the file holds Python code or objects, not only tensors "
                                  f"({what_it_holds(exc, path)}); loading it could run that code. {remedy}") from None
        if "Weights only load failed" in str(exc):     # PyTorch's text would advise loading it unsafely
            raise pickle.UnpicklingError(f"damaged, truncated or not a file of tensors "
                                         f"({what_it_holds(exc, path)})") from None
        raise
