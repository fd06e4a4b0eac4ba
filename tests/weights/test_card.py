"""The model card: written beside every export, every field from the record, "not recorded" where the record
has nothing; ``mim_nnunet card`` prints it; leakage checks are recorded for the card."""

import json
import subprocess

import torch

from helpers.commands import command
from helpers.exports import hybrid_export
from mim_nnunet.backbones import build_encoder
from mim_nnunet.data.pipeline import record_leakage_check
from mim_nnunet.weights.card import NOT_RECORDED, card_path, card_text
from mim_nnunet.weights.export import export_encoder

FIELDS = ("Collection", "Data named by -d", "Manifest hash", "Cases per source and modality", "Leakage checks",
          "Target spacing", "Orientation", "Steps", "Effective batch", "Learning rate", "Precision", "Devices",
          "Wall time", "Seed", "MiM switches")


def line(card: str, field: str) -> str:
    (found,) = [ln for ln in card.splitlines() if ln.startswith(f"- {field}")]
    return found


def test_a_record_without_run_fields_says_not_recorded_for_each(tmp_path):
    """An export whose record predates the card (or an import) has none of the run's fields."""
    card = card_text({"backbone": "hybrid", "size": "tiny", "in_channels": 1, "input_size": [32, 32, 32],
                      "token_size": 16, "num_parameters": 1234, "num_tensors": 3}, "old.safetensors")
    for field in FIELDS:
        assert line(card, field).endswith(NOT_RECORDED) or f"{NOT_RECORDED};" in line(card, field), field
    assert "Masked-token reconstruction loss on held-out crops: not recorded" in card
    assert "- Intensities: not recorded" in card and "- Parameters: 1,234 in 3 tensors" in card
    assert "@article{zhuang2025mim" in card and "LICENCE TO FILL IN" in card


def test_every_field_comes_from_the_record(tmp_path):
    record = {"backbone": "resenc", "size": "L", "in_channels": 1, "input_size": [96, 96, 96], "token_size": 16,
              "num_parameters": 10, "num_tensors": 2, "key_map": "k", "sha256": "s", "created": "c",
              "spacing": [2.0, 1.5, 1.5], "manifest_hash": "f" * 64, "steps": 100000,
              "normalisation": {"MRI": {"scheme": "zscore"}},
              "data": {"collection": "1k", "sources": ["1k"], "cases": {"OpenNeuro": {"MRI": 7}, "BraTS": {"MRI": 2}},
                       "num_cases": 9, "leakage_checks": [{"dataset": "3", "images_found": 1, "date": "d"}]},
              "preprocessing": {"orientation": "RAS", "array_axes": ["z", "y", "x"]},
              "training": {"effective_batch_crops": 8, "subvolumes_per_crop": 21, "effective_batch_subvolumes": 168,
                           "lr": 3e-4, "lr_rule": "plan", "schedule": "S", "precision": "bf16", "device": "cuda",
                           "world_size": 4, "device_names": ["NVIDIA H100"] * 4, "seed": 3, "wall_time_s": 7322.0,
                           "mim": {"r1": 0.5}},
              "validation": {"crops": 8, "held_out_cases": 2, "first": {"step": 0, "rec_l1": 1.0, "rec_l2": 0.9},
                             "last": {"step": 100000, "rec_l1": 0.25, "rec_l2": 0.5}}}
    card = card_text(record, "m.safetensors")
    assert NOT_RECORDED not in card.split("## Model")[1].split("## How to fine-tune")[0]
    assert "| OpenNeuro | MRI | 7 |" in card and "| BraTS | MRI | 2 |" in card and "9 cases in all" in card
    assert line(card, "Leakage check against nnU-Net dataset 3") .startswith("- Leakage check against nnU-Net dataset "
                                                                             "3: 1 image(s) found")
    assert line(card, "Target spacing") == "- Target spacing: 2 x 1.5 x 1.5 mm (z, y, x)"
    assert line(card, "Effective batch").startswith("- Effective batch: 168 sub-volumes per optimiser step (8 crop")
    assert line(card, "Learning rate") == "- Learning rate: 0.0003 (peak; from the plan: plan); S"
    assert line(card, "Devices") == "- Devices: 4 x cuda (NVIDIA H100)"
    assert line(card, "Wall time").startswith("- Wall time: 7322 s (2 h 02 min 02 s")
    assert "| L1 | 1.0000 | 0.2500 |" in card and "| L2 | 0.9000 | 0.5000 |" in card
    assert "- MRI: z-score per case" in card and "no plans variant is needed" in card
    assert "-pl nnUNetPlannerResEncL" in card and "-tr nnUNetTrainerMiMResEnc -p nnUNetResEncUNetLPlans" in card
    assert "export-nnssl" in card


def test_every_export_gets_its_card_and_the_command_prints_it(tmp_path):
    weights = hybrid_export(tmp_path)
    card = card_path(weights)
    assert card.name == "h.card.md" and card.read_text(encoding="utf-8").startswith("# Model card: h.safetensors")
    assert not list(tmp_path.glob(".tmp_*"))
    result = subprocess.run([command("mim_nnunet"), "card", str(weights)], capture_output=True, encoding="utf-8",
                            errors="replace", timeout=300)
    assert result.returncode == 0 and result.stdout == card.read_text(encoding="utf-8")
    card.unlink()                          # an export written before cards: printed from its record
    result = subprocess.run([command("mim_nnunet"), "card", str(weights)], capture_output=True, encoding="utf-8",
                            errors="replace", timeout=300)
    assert result.returncode == 0 and "## Model" in result.stdout and "printed from its record" in result.stderr
    assert "HU window [-1000, 1000]" in result.stdout


def test_leakage_checks_are_recorded_per_dataset_and_data(tmp_path):
    record_leakage_check(tmp_path, "3", "aa", 2)
    record_leakage_check(tmp_path, "4", "aa", 0)
    record_leakage_check(tmp_path, "3", "aa", 0)          # checked again: the latest outcome replaces the first
    record_leakage_check(tmp_path, "3", "bb", 5)          # other data: its own entry
    checks = json.loads((tmp_path / "leakage_checks.json").read_text(encoding="utf-8"))
    assert [(c["dataset"], c["manifest_hash"], c["images_found"]) for c in checks] == \
        [("4", "aa", 0), ("3", "aa", 0), ("3", "bb", 5)]


def test_swin_card_points_at_monai(tmp_path):
    encoder, _ = build_encoder("swin", "tiny", 1, (32, 32, 32))
    torch.manual_seed(0)
    weights, _ = export_encoder(encoder, "swin", "tiny", tmp_path / "s.safetensors", in_channels=1,
                                input_size=(32, 32, 32))
    card = card_path(weights).read_text(encoding="utf-8")
    assert "SwinUNETR(...).swinViT" in card and "-tr nnUNetTrainerMiMSwinUNETR_tiny_1epoch" in card
