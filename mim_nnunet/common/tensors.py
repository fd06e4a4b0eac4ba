"""Checks on the values of tensors about to be written or just read: a non-finite weight or optimiser
moment spoils every later step, so no checkpoint or export is written with one and none is trained from."""

from __future__ import annotations

from typing import Iterable, Iterator, Optional, Tuple

import torch


def first_nonfinite(named: Iterable[Tuple[str, torch.Tensor]]) -> Optional[Tuple[str, int]]:
    """(name, number of NaN/inf values) of the first floating-point tensor that holds any; None if all are
    finite. Integer and bool tensors (step counters, masks) cannot hold NaN and are skipped."""
    for name, tensor in named:
        if isinstance(tensor, torch.Tensor) and (tensor.is_floating_point() or tensor.is_complex()):
            finite = torch.isfinite(tensor)
            if not bool(finite.all()):
                return name, int((~finite).sum())
    return None


def optimizer_tensors(optimizer: torch.optim.Optimizer,
                      model: Optional[torch.nn.Module] = None) -> Iterator[Tuple[str, torch.Tensor]]:
    """Every tensor of the optimiser's state as ("optimizer <entry> of <parameter name>", tensor); parameters
    are named after ``model``'s ``named_parameters`` (by index when ``model`` is not given or lacks one)."""
    names = {id(p): n for n, p in model.named_parameters()} if model is not None else {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            for entry, value in optimizer.state.get(p, {}).items():
                if isinstance(value, torch.Tensor):
                    yield f"optimizer {entry} of {names.get(id(p), 'a parameter')}", value
