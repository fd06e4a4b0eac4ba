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
    CHECKPOINT_FORMAT,
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
    # copied without its checksum file: the record inside it still verifies it
    path.write_bytes(first)
    checksum_path(path).unlink()
    assert load_checkpoint(path)["step"] == 3


def _optimizer_bytes_overwritten(raw: bytes, moment: torch.Tensor) -> bytes:
    """``raw`` with the bytes of one optimiser tensor (found by value in the file) set to 0xFF (NaN)."""
    data = moment.contiguous().view(torch.uint8).numpy().tobytes()
    at = raw.find(data)
    assert at > 0 and raw.find(data, at + 1) < 0
    return raw[:at] + b"\xff" * len(data) + raw[at + len(data):]


def test_a_copy_without_its_checksum_file_is_still_verified_and_old_files_need_a_record(tmp_path):
    """A checkpoint copied alone whose optimiser bytes were overwritten is refused; a file of an older version
    (no record inside) loads with its .sha256.json, and without it only when accepted knowingly."""
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    with torch.no_grad():                      # a moment with distinct values, to find its bytes in the file
        optimizer.state[model.weight]["exp_avg_sq"].copy_(torch.arange(1.0, 7.0).reshape(2, 3) / 7)
    path = save_checkpoint(tmp_path / "checkpoint_latest.pt", model=model, optimizer=optimizer, scaler=scaler,
                           step=3, settings={"a": [1, 2]}, rng=[{"python": (3, (1, 2), None)}])
    checksum_path(path).unlink()
    assert load_checkpoint(path)["optimizer"]["state"][0]["exp_avg_sq"][1, 2] == pytest.approx(6 / 7)
    spoilt = _optimizer_bytes_overwritten(path.read_bytes(), optimizer.state[model.weight]["exp_avg_sq"])
    path.write_bytes(spoilt)
    with pytest.raises(CheckpointError, match=r"checkpoint_latest\.pt: content differs from the digest stored in "
                                              r"it \(the file changed after it was written"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="content differs from the digest"):      # the switch does not help
        load_checkpoint(path, accept_unverified=True)
    assert path.read_bytes() == spoilt                                                   # nothing rewritten
    # a file of an older version: the same state without the record inside
    old = {"format": CHECKPOINT_FORMAT, "step": 2, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
           "scaler": scaler.state_dict(), "settings": {}, "rng": []}
    torch.save(old, path)
    checksum_path(path).write_text(json.dumps({"sha256": [hashlib.sha256(path.read_bytes()).hexdigest()]}),
                                   encoding="utf-8")
    assert load_checkpoint(path)["step"] == 2                                             # with its record: as before
    checksum_path(path).unlink()
    with pytest.raises(CheckpointError) as refused:
        load_checkpoint(path)
    message = str(refused.value)
    assert message.startswith(f"{path}: cannot be verified: it carries no integrity record") and "\n" not in message
    assert "checkpoint_latest.pt.sha256.json is not beside it" in message and message.endswith(
        "add --accept_unverified to use the checkpoint as it is")
    assert load_checkpoint(path, accept_unverified=True)["step"] == 2


def test_no_checkpoint_is_written_with_a_non_finite_value(tmp_path):
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    path = save_checkpoint(tmp_path / "checkpoint_latest.pt", model=model, optimizer=optimizer, scaler=scaler,
                           step=1, settings={}, rng=[])
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    optimizer.state[model.bias]["exp_avg_sq"][1] = float("nan")
    with pytest.raises(CheckpointError, match=r"optimizer exp_avg_sq of bias holds 1 non-finite value\(s\) "
                                              r"\(NaN/inf\) after step 2; the run stops without writing a checkpoint "
                                              r"or export \(the last good checkpoint .*checkpoint_latest.pt is kept"):
        save_checkpoint(path, model=model, optimizer=optimizer, scaler=scaler, step=2, settings={}, rng=[])
    optimizer.state[model.bias]["exp_avg_sq"][1] = 1.0
    with torch.no_grad():
        model.weight[0, 0] = float("inf")
    with pytest.raises(CheckpointError, match=r"^weight holds 1 non-finite value"):
        save_checkpoint(path, model=model, optimizer=optimizer, scaler=scaler, step=2, settings={}, rng=[])
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


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
