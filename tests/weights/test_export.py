"""Export -> load round trips for both backbones, and bad export files."""

import hashlib
import json

import pytest
import torch
from monai.networks.nets import SwinUNETR
from safetensors.torch import save_file

from mim_nnunet.backbones import build_encoder
from mim_nnunet.weights.export import ExportError, export_encoder, load_export


def test_hybrid_round_trip_keeps_release_names(tmp_path):
    encoder, _ = build_encoder("hybrid", "tiny", 2, (64, 64, 32))
    weights, meta = export_encoder(encoder, "hybrid", "tiny", tmp_path / "enc.safetensors", in_channels=2,
                                   input_size=(64, 64, 32), spacing=[1.0, 1.0, 1.0], steps=7, manifest_hash="h")
    state, record = load_export(weights)
    fresh, _ = build_encoder("hybrid", "tiny", 2, (64, 64, 32))
    fresh.load_state_dict(state, strict=True)
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in encoder.state_dict().items())
    assert record["steps"] == 7 and record["in_channels"] == 2 and record["backbone"] == "hybrid"
    assert "blocks4.0.attn.qkv.weight" in state
    assert not list(tmp_path.glob(".tmp_*"))


def test_swin_export_loads_strictly_into_monai_swinunetr(tmp_path):
    encoder, _ = build_encoder("swin", "tiny", 1, (32, 32, 32))
    weights, _ = export_encoder(encoder, "swin", "tiny", tmp_path / "swin.safetensors", in_channels=1,
                                input_size=(32, 32, 32))
    state, record = load_export(weights)
    net = SwinUNETR(in_channels=1, out_channels=4, feature_size=12)
    net.swinViT.load_state_dict(state, strict=True)
    assert torch.equal(net.swinViT.patch_embed.proj.weight, encoder.swinViT.patch_embed.proj.weight)


def test_bad_exports_are_clear_errors(tmp_path):
    encoder, _ = build_encoder("hybrid", "tiny", 1, (32, 32, 32))
    weights, meta = export_encoder(encoder, "hybrid", "tiny", tmp_path / "e.safetensors", in_channels=1,
                                   input_size=(32, 32, 32))
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ExportError, match="e.safetensors: corrupt or not a safetensors file"):
        load_export(weights)
    meta.write_text(json.dumps({"format": 99, "backbone": "hybrid"}))
    with pytest.raises(ExportError, match="not a mim-nnunet export record"):
        load_export(weights)
    with pytest.raises(ExportError, match="missing.safetensors: not found"):
        load_export(tmp_path / "missing.safetensors")


def _small_export(tmp_path, state):
    from mim_nnunet.weights.export import export_record, write_export
    return write_export(state, export_record("hybrid", "tiny", 1, (32, 32, 32)), tmp_path / "s.safetensors")


def test_a_flipped_bit_fails_the_content_checksum(tmp_path):
    weights, meta = _small_export(tmp_path, {"patch_embed1.proj.weight": torch.ones(4, 1, 2, 2, 2)})
    load_export(weights)
    raw = bytearray(weights.read_bytes())
    # the last 4 bytes are the last float32 of the only tensor (1.0 = 00 00 80 3f): flip its exponent's top bit
    assert raw[-4:] == bytearray(b"\x00\x00\x80\x3f")
    raw[-1] ^= 0x40
    weights.write_bytes(bytes(raw))
    with pytest.raises(ExportError, match=r"s\.safetensors: content checksum differs from its record s\.json"):
        load_export(weights)
    # without a checksum (records written before 0.2) the flip, 1.0 -> inf (0x7f800000), is still refused
    record = json.loads(meta.read_text(encoding="utf-8"))
    del record["sha256"]
    meta.write_text(json.dumps(record))
    with pytest.raises(ExportError, match=r"tensor 'patch_embed1.proj.weight' holds 1 non-finite value\(s\)"):
        load_export(weights)


def test_non_finite_weights_are_refused_and_old_records_load(tmp_path):
    good = {"a": torch.zeros(3), "b": torch.arange(4)}                  # an integer tensor is never checked
    weights, meta = _small_export(tmp_path, good)
    record = json.loads(meta.read_text(encoding="utf-8"))
    assert record["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    del record["sha256"]
    meta.write_text(json.dumps(record))
    state, _ = load_export(weights)
    assert torch.equal(state["b"], torch.arange(4))
    nan = {"a": torch.tensor([0.0, float("nan"), float("-inf")]), "b": torch.arange(4)}
    # writing one is refused, and the export already there stays byte for byte
    before = weights.read_bytes(), meta.read_bytes()
    with pytest.raises(ExportError, match=r"s\.safetensors: not written: tensor 'a' holds 2 non-finite value\(s\) "
                                          r"\(NaN/inf\); the file there is kept as it was"):
        _small_export(tmp_path, nan)
    assert (weights.read_bytes(), meta.read_bytes()) == before
    # one written by other means (its record has no checksum, as before 0.2) is refused on load
    save_file(nan, str(weights))
    with pytest.raises(ExportError, match=r"tensor 'a' holds 2 non-finite value\(s\) \(NaN/inf\)"):
        load_export(weights)
