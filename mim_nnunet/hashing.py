"""Content digests of tensors: equal digests mean bit-identical values (used to prove that ranks agree
and that a network starts from exactly the exported weights)."""

from __future__ import annotations

import hashlib
from typing import Iterable

import torch


def tensor_sha1(tensors: Iterable[torch.Tensor]) -> str:
    """SHA-1 of the tensors' bytes, in order."""
    h = hashlib.sha1()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
