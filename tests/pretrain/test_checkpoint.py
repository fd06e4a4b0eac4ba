"""Checkpoint files: the content checksum beside them, the window between the two writes, old files."""

import hashlib
import json

import pytest
import torch

from mim_nnunet.backbones import backbone_sizes
from mim_nnunet.data.planner import plan_pretraining
from mim_nnunet.mim.config import MiMConfig
from mim_nnunet.mim.model import build_mim
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


def _fingerprint():
    return {"manifest_hash": "abc", "overall": {"num_cases": 3, "median_spacing": [1.0] * 3, "spacing_p10": [1.0] * 3,
                                                "median_shape": [200] * 3, "modalities": ["CT"]},
            "cases": [{"channels": 1}] * 3}


def test_a_tiny_checkpoint_is_lean_and_base_keeps_the_papers_projection_width(tmp_path):
    base = plan_pretraining(_fingerprint(), "hybrid", "base")
    assert base["mim"]["align_dim"] == 2048                              # the paper's D = 2048
    plan = plan_pretraining(_fingerprint(), "hybrid", "tiny")
    d, width = plan["mim"]["align_dim"], backbone_sizes("hybrid", "tiny")["decoder_dim"]
    assert d == 256 and "align_dim 256" in plan["explain"]["mim"]
    model = build_mim("hybrid", "tiny", MiMConfig(input_size=tuple(plan["input_size"]), **{
        k: tuple(v) if isinstance(v, list) else v for k, v in plan["mim"].items()}), plan["backbone_sizes"])
    # two pairs x (child, parent) x Linear(width, D) + Linear(D, D), with biases
    projection = 4 * (width * d + d + d * d + d)
    assert sum(p.numel() for p in model.align.parameters()) == projection
    total = sum(p.numel() for p in model.parameters())
    assert projection < 0.15 * total                                    # was 18 M of 21 M at D = 2048
    optimizer = torch.optim.AdamW(model.parameters())
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()                                                    # Adam's two moments exist
    path = save_checkpoint(tmp_path / "c.pt", model=model, optimizer=optimizer,
                           scaler=torch.amp.GradScaler("cpu", enabled=False), step=1, settings={}, rng=[])
    # weights and two moments in fp32, plus the buffers and the file's own overhead (under 10 %)
    assert 3 * 4 * total < path.stat().st_size < 1.1 * 3 * 4 * total + 2 ** 20
    assert path.stat().st_size < 60e6                                   # it was 255 MB
