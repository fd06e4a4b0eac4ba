"""import-official: the authors' checkpoints become our exports; pickled code never runs."""

import argparse
import json
import subprocess
from pathlib import Path

import pytest
import torch

from helpers.commands import command
from mim_nnunet.backbones import build_encoder
from mim_nnunet.weights.export import ExportError, load_export
from mim_nnunet.weights.official import import_official

KEYS = json.loads((Path(__file__).parents[1] / "fixtures" / "official_mim_keys.json").read_text(encoding="utf-8"))


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
    card = (tmp_path / "imported.card.md").read_text(encoding="utf-8")       # its model card beside it
    assert "- Imported from: official MiM checkpoint mim_official.pth" in card and "- Steps: not recorded" in card


def test_import_official_refuses_pickled_code(tmp_path):
    official_checkpoint(tmp_path / "evil.pth", extra={"hook": torch.nn.Linear})    # a class: code, not data
    with pytest.raises(ExportError, match=r"evil.pth: refused: the file holds Python code or objects, not only "
                                          r"tensors \(a reference to torch.nn.modules.linear.Linear\)") as refused:
        import_official(tmp_path / "evil.pth", tmp_path / "x.safetensors")
    assert "weights_only" not in str(refused.value)        # never the advice to load it unsafely
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
