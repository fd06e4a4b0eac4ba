"""Checkpoint files: the content checksum beside them, the window between the two writes, old files."""

import hashlib
import json

import pytest
import torch

from mim_nnunet.pretrain.checkpoint import (
    CheckpointError,
    checksum_path,
    load_checkpoint,
    save_checkpoint,
)


def _save(path, value):
    model = torch.nn.Linear(3, 2)
    torch.nn.init.constant_(model.weight, value)
    optimizer = torch.optim.AdamW(model.parameters())
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    return save_checkpoint(path, model=model, optimizer=optimizer, scaler=scaler, step=3, settings={}, rng=[])


def test_a_changed_checkpoint_is_refused_and_the_write_window_is_safe(tmp_path):
    path = _save(tmp_path / "checkpoint_latest.pt", 1.0)
    first = path.read_bytes()
    assert json.loads(checksum_path(path).read_text(encoding="utf-8")) == {"sha256": [hashlib.sha256(first).hexdigest()]}
    assert load_checkpoint(path)["model"]["weight"].eq(1.0).all()
    # a second save, killed after the checksum record was written but before the rename: the old file is
    # still in place and the record lists both
    _save(tmp_path / "second.pt", 2.0)
    second = (tmp_path / "second.pt").read_bytes()
    checksum_path(path).write_text(json.dumps({"sha256": [hashlib.sha256(second).hexdigest(),
                                                          hashlib.sha256(first).hexdigest()]}))
    assert load_checkpoint(path)["model"]["weight"].eq(1.0).all()
    # one changed byte (the file stays a valid zip only by luck; the checksum says it changed either way)
    raw = bytearray(first)
    raw[len(raw) // 2] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=r"checkpoint_latest\.pt: content checksum differs from "
                                              r"checkpoint_latest\.pt\.sha256\.json"):
        load_checkpoint(path)
    # written before checksums (no record): loaded as before
    path.write_bytes(first)
    checksum_path(path).unlink()
    assert load_checkpoint(path)["step"] == 3
