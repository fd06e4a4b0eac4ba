"""Export -> load round trips for both backbones, bad files, and importing the authors' checkpoints."""

import argparse
import json
import subprocess
from pathlib import Path

import pytest
import torch
from monai.networks.nets import SwinUNETR

from conftest import command
from mim_nnunet.backbones import build_encoder
from mim_nnunet.export import ExportError, export_encoder, import_official, load_export

KEYS = json.loads((Path(__file__).parent / "data" / "official_mim_keys.json").read_text())


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


def official_checkpoint(path, extra=None):
    g = torch.Generator().manual_seed(0)
    model = {k: torch.randn(v, generator=g) for k, v in KEYS["pretrain"].items()}
    torch.save({"model": model, "args": argparse.Namespace(lr=2e-4, batch_size=4), "epoch": 100, **(extra or {})},
               path)
    return model


def test_import_official_keeps_the_encoder_and_reports_the_rest(tmp_path):
    model = official_checkpoint(tmp_path / "mim_official.pth")
    report = import_official(tmp_path / "mim_official.pth", tmp_path / "imported.safetensors")
    decoder_side = {k for k in model if k.startswith(("decoder_", "aggregate_")) or k == "mask_token"}
    assert set(report["dropped"]) == decoder_side
    assert set(report["kept"]) == set(model) - decoder_side
    state, record = load_export(tmp_path / "imported.safetensors")
    encoder, _ = build_encoder("hybrid", "base", 1, (96, 96, 96))
    encoder.load_state_dict(state, strict=True)
    assert torch.equal(encoder.blocks4[3].attn.proj.weight, model["blocks4.3.attn.proj.weight"])
    assert record["input_size"] == [96, 96, 96] and "official" in record["source"]


def test_import_official_refuses_pickled_code(tmp_path):
    official_checkpoint(tmp_path / "evil.pth", extra={"hook": torch.nn.Linear})    # a class: code, not data
    with pytest.raises(ExportError, match="evil.pth: refused or unreadable checkpoint"):
        import_official(tmp_path / "evil.pth", tmp_path / "x.safetensors")
    torch.save({"model": {"w": torch.ones(2)}}, tmp_path / "other.pth")
    with pytest.raises(ExportError, match="not a MiM hybrid checkpoint"):
        import_official(tmp_path / "other.pth", tmp_path / "x.safetensors")


def test_import_official_command(tmp_path, clean_env):
    official_checkpoint(tmp_path / "release.pth")
    result = subprocess.run([command("mim_nnunet"), "import-official", str(tmp_path / "release.pth")],
                            env=clean_env, capture_output=True, encoding="utf-8", errors="replace", timeout=600)
    assert result.returncode == 0, result.stderr
    assert "dropped decoder_pred.weight" in result.stdout and "dropped aggregate_mid.fc1.weight" in result.stdout
    assert (tmp_path / "release_mim_export.safetensors").is_file()
    assert (tmp_path / "release_mim_export_import_report.json").is_file()
