"""Content digests: of tensors (equal digests mean bit-identical values, used to prove that ranks agree
and that a network starts from exactly the exported weights) and of files (the manifest's identity of
the data, the demo archive's check)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, List

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
