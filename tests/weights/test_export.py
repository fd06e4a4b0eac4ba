"""Export -> load round trips for both backbones, and bad export files."""

import json

import pytest
import torch
from monai.networks.nets import SwinUNETR

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
