"""Training checkpoints: the complete state of a run, written atomically, read with ``weights_only=True``.

A checkpoint holds the model, optimiser, loss scaler, the number of steps done, the settings and the
RNG states of every rank. The learning rate is a function of the step and the data stream a function
of (seed, batch index), so these are all a resumed run needs to continue exactly.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Dict, List

import numpy as np
import torch

from ..atomic import atomic_write
from ..errors import MimError

CHECKPOINT_FORMAT = "mim-nnunet-pretrain-checkpoint/1"
LATEST = "checkpoint_latest.pt"


class CheckpointError(MimError):
    """A checkpoint that is missing, corrupt or not ours."""


def capture_rng() -> Dict:
    """This process's RNG states (python, numpy, torch CPU and CUDA) as tensors and plain values."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"python": random.getstate(), "numpy": [kind, torch.from_numpy(keys.copy()), pos, has_gauss, gauss],
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def restore_rng(state: Dict) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy(), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler, step: int,
                    settings: Dict, rng: List[Dict]) -> Path:
    """Write the run's state after ``step`` optimiser steps; the previous file stays until the new one is
    complete (write to a temporary name, then rename)."""
    state = {"format": CHECKPOINT_FORMAT, "step": step, "model": model.state_dict(),
             "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(), "settings": settings, "rng": rng}
    return atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: Path, map_location="cpu") -> Dict:
    """A checkpoint written by :func:`save_checkpoint`; one-line errors for anything else."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no checkpoint there")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(f"{path}: corrupt or not a mim-nnunet checkpoint ({first[:200]})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a mim-nnunet pre-training checkpoint "
                              f"(format {state.get('format') if isinstance(state, dict) else type(state).__name__!r})")
    return state


def remove_stale_temporaries(folder: Path) -> List[Path]:
    """Delete half-written files a killed run left behind (``.tmp_<pid>_<name>``); returns them."""
    stale = sorted(Path(folder).rglob(".tmp_*")) if Path(folder).is_dir() else []
    for p in stale:
        p.unlink(missing_ok=True)
    return stale
