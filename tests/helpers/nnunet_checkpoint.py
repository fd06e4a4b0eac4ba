"""Read nnU-Net checkpoints (``checkpoint_final.pth``) without unpickling code.

nnU-Net stores numpy scalars in its training log, which ``weights_only=True`` refuses by default; we
allow exactly the numpy types that carry plain numbers and nothing else.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from mim_nnunet.common.errors import MimError


def _numpy_safe_globals() -> list:
    scalar = getattr(np, "_core", np.core).multiarray.scalar  # numpy 2 moved core to _core
    dtypes = [type(np.dtype(t)) for t in ("float16", "float32", "float64", "int32", "int64", "bool", "uint8")]
    return [scalar, np.dtype, *dtypes]


def load_nnunet_checkpoint(path: os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """The checkpoint dict (``network_weights``, ``trainer_name``, ``init_args``, ...), loaded safely."""
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise MimError(f"{path}: checkpoint not found") from None
    except Exception as exc:  # truncated zip, foreign pickle content, ...
        raise MimError(f"{path}: not a readable nnU-Net checkpoint ({str(exc).splitlines()[0]})") from None
