"""Content digests: of tensors (equal digests mean bit-identical values, used to prove that ranks agree
and that a network starts from exactly the exported weights), of nested states (the integrity record a
checkpoint carries inside it) and of files (the manifest's identity of the data, the demo archive's check)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, List

if TYPE_CHECKING:   # torch is imported where tensors are hashed: file hashing must stay light
    import torch

CHUNK = 1 << 20


def tensor_sha1(tensors: Iterable["torch.Tensor"]) -> str:
    """SHA-1 of the tensors' bytes, in order."""
    import torch

    h = hashlib.sha1()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def state_sha256(state: Any) -> str:
    """sha256 of a nested state (dicts, lists, tuples of tensors and plain values), as it is in memory: each
    tensor's dtype, shape and bytes, each plain value's type and repr, containers in their order. A file
    saved with ``torch.save`` and loaded back gives the same digest; one changed bit in any tensor does not."""
    h = hashlib.sha256()
    _feed(h, state)
    return h.hexdigest()


def _feed(h, obj: Any) -> None:
    import torch

    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}:".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())      # the buffer itself, no copy
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)}:".encode())
        for key, value in obj.items():
            _feed(h, key)
            _feed(h, value)
    elif isinstance(obj, (list, tuple)):
        h.update(f"{'L' if isinstance(obj, list) else 'U'}{len(obj)}:".encode())
        for value in obj:
            _feed(h, value)
    else:
        h.update(f"V{type(obj).__name__}:{obj!r};".encode())


def files_of(path: str) -> List[Path]:
    """The file itself, or a folder's files (a DICOM series) in name order."""
    p = Path(path)
    return sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]


def file_sha256(path: str) -> str:
    """sha256 of a file, or of a folder's files in name order."""
    h = hashlib.sha256()
    for f in files_of(path):
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(CHUNK), b""):
                h.update(block)
    return h.hexdigest()
