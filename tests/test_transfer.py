"""MiMUNETR, weight transfer with its pre-flight check, weight finding and the encoder learning rate."""

import json
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from monai.networks.nets import SwinUNETR

from mim_nnunet.backbones import build_encoder
from mim_nnunet.export import export_encoder, load_export
from mim_nnunet.networks import MiMUNETR
from mim_nnunet.optim import build_adamw
from mim_nnunet.pretrained_weights import PLANS_KEY, WEIGHTS_ENV, WeightsNotFound, find_weights
from mim_nnunet.transfer import TransferError, inflate_stem, transfer

KEYS = json.loads((Path(__file__).parent / "data" / "official_mim_keys.json").read_text())


def hybrid_export(tmp_path, name="h", size="tiny", input_size=(32, 32, 32), spacing=(1.0, 1.0, 1.0)):
    torch.manual_seed(0)
    encoder, _ = build_encoder("hybrid", size, 1, input_size)
    return export_encoder(encoder, "hybrid", size, tmp_path / f"{name}.safetensors", in_channels=1,
                          input_size=input_size, spacing=list(spacing),
                          intensity={"CT": {"scheme": "ct_window", "window": [-1000.0, 1000.0]}})[0]


def test_mimunetr_backbone_has_the_release_fine_tuning_names_and_shapes():
    net = MiMUNETR(1, 3, (96, 96, 96))
    official = {k: torch.zeros(v) if v else torch.tensor(0) for k, v in KEYS["finetune_encoder"].items()}
    net.backbone.load_state_dict(official, strict=True)                     # raises on any difference
    assert {k: list(v.shape) for k, v in net.backbone.state_dict().items()} == KEYS["finetune_encoder"]


def test_mimunetr_takes_any_multiple_of_32_and_c_channels():
    net = MiMUNETR(2, 3, (64, 32, 96), size="tiny", feature_size=12).eval()
    assert net(torch.randn(1, 2, 64, 32, 96)).shape == (1, 3, 64, 32, 96)
    assert net.backbone.blocks4[0].attn.relative_position_bias_table.shape == (7 * 3 * 11, 3)
    with pytest.raises(ValueError, match="multiple of 32"):
        MiMUNETR(1, 2, (48, 64, 64), size="tiny")


def test_export_loads_completely_and_exactly(tmp_path):
    path = hybrid_export(tmp_path)
    state, record = load_export(path)
    net = MiMUNETR(1, 2, (32, 32, 32), size="tiny", feature_size=12)
    report = transfer(net, state, record, str(path), spacing=[1.0, 1.0, 1.0], normalization=["CTNormalization"])
    assert report.encoder_fraction == 1.0 and not report.warnings and not report.adapted
    loaded = net.state_dict()
    for key, value in state.items():
        if "backbone." + key in loaded:
            assert torch.equal(loaded["backbone." + key], value), key
    assert {k for k in report.ignored} == {k for k in state if k.startswith(("stage", "norm."))}
    assert any("gamma_1" in k for k in report.new) and any(k.startswith("decoder") for k in report.new)
    rows = report.rows()
    assert rows["backbone.blocks4"][0] > 0 and rows["backbone.blocks4"][1] > 0 and rows["decoder1"][0] == 0
    assert "100.00% of" in report.table()


def test_grid_change_interpolates_and_channels_inflate(tmp_path):
    path = hybrid_export(tmp_path, spacing=(3.0, 1.0, 1.0))
    state, record = load_export(path)
    net = MiMUNETR(4, 2, (64, 32, 64), size="tiny", feature_size=12)
    report = transfer(net, state, record, str(path), spacing=[1.0, 1.0, 1.0], normalization=["ZScoreNormalization"] * 4)
    assert report.encoder_fraction == 1.0
    assert "interpolated from grid [2, 2, 2] to [4, 2, 4]" in report.adapted["backbone.pos_embed"]
    assert "inflated from 1 to 4" in report.adapted["backbone.patch_embed1.proj.weight"]
    assert len(report.warnings) == 2 and "spacing" in report.warnings[0] and "CT" in report.warnings[1]
    # inflation keeps activations: 4 copies of an image through the 4-channel stem = 1 image through the original
    x = torch.randn(1, 1, 8, 8, 8)
    w1, w4 = state["patch_embed1.proj.weight"], net.backbone.patch_embed1.proj.weight.detach()
    assert torch.allclose(F.conv3d(x.repeat(1, 4, 1, 1, 1), w4, stride=2), F.conv3d(x, w1, stride=2), atol=1e-6)
    assert torch.equal(inflate_stem(torch.ones(2, 1, 1, 1, 1), 4), torch.full((2, 4, 1, 1, 1), 0.25))
    # the interpolated embedding of a constant field is that constant
    from mim_nnunet.transfer import interpolate_pos_embed
    assert torch.allclose(interpolate_pos_embed(torch.full((1, 8, 5), 2.0), [2, 2, 2], [4, 2, 4]),
                          torch.full((1, 32, 5), 2.0))


def test_wrong_backbone_and_mismatched_shapes_fail_loudly(tmp_path):
    torch.manual_seed(0)
    swin, _ = build_encoder("swin", "tiny", 1, (32, 32, 32))
    swin_path = export_encoder(swin, "swin", "tiny", tmp_path / "s.safetensors", in_channels=1,
                               input_size=(32, 32, 32))[0]
    net = MiMUNETR(1, 2, (32, 32, 32), size="tiny", feature_size=12)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(TransferError, match="a 'swin' export, but MiMUNETR needs a 'hybrid' one"):
        transfer(net, *load_export(swin_path), str(swin_path))
    base_path = hybrid_export(tmp_path, "base", size="base")
    with pytest.raises(TransferError, match=r"only 0\.\d% of the encoder's parameters would load .*shapes differ, "
                                            r"e\.g\. backbone\.\S+ \[48"):
        transfer(net, *load_export(base_path), str(base_path))
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())      # nothing half-loaded
    # one tensor short of 99 %: blocks4 qkv of every block (a large share) with another shape
    state, record = load_export(hybrid_export(tmp_path))
    state = {k: (v[:-3] if "blocks4" in k and "qkv.weight" in k else v) for k, v in state.items()}
    with pytest.raises(TransferError, match="qkv.weight"):
        transfer(net, state, record, "cut")


def test_swin_export_into_swinunetr_with_two_channels(tmp_path):
    torch.manual_seed(0)
    swin, _ = build_encoder("swin", "tiny", 1, (32, 32, 32))
    path = export_encoder(swin, "swin", "tiny", tmp_path / "s.safetensors", in_channels=1, input_size=(32, 32, 32))[0]
    net = SwinUNETR(in_channels=2, out_channels=3, feature_size=12)
    state, record = load_export(path)
    report = transfer(net, state, record, str(path))
    assert report.encoder_fraction == 1.0 and "swinViT.patch_embed.proj.weight" in report.adapted
    assert torch.equal(net.swinViT.layers3[0].blocks[1].mlp.linear1.weight, state["layers3.0.blocks.1.mlp.linear1.weight"])
    assert report.ignored == {}                      # the swin export holds exactly the Swin-ViT


def test_weights_are_found_in_plans_then_environment_then_results(tmp_path, monkeypatch):
    results = tmp_path / "results"
    old = hybrid_export(results / "MiM_a" / "hybrid_tiny" / "export", "mim_hybrid_tiny")
    new = hybrid_export(results / "MiM_b" / "hybrid_tiny" / "export", "mim_hybrid_tiny")
    os.utime(old, (1, 1))
    hybrid_export(results / "MiM_c" / "hybrid_base" / "export", "mim_hybrid_base", size="base")
    monkeypatch.setenv("nnUNet_results", str(results))
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    assert find_weights({}, "hybrid", "tiny", "T")[0] == new                  # newest of the right size
    monkeypatch.setenv(WEIGHTS_ENV, str(old))
    assert find_weights({}, "hybrid", "tiny", "T") == (old, f"${WEIGHTS_ENV}")
    assert find_weights({PLANS_KEY: {"hybrid": str(new)}}, "hybrid", "tiny", "T")[0] == new
    with pytest.raises(WeightsNotFound, match="names .*missing.safetensors, which does not exist"):
        find_weights({PLANS_KEY: {"hybrid": str(tmp_path / "missing.safetensors")}}, "hybrid", "tiny", "T")
    monkeypatch.delenv(WEIGHTS_ENV)
    with pytest.raises(WeightsNotFound, match="mim_pretrain -d DATA -backbone swin -size tiny.*nnUNetTrainerSwinUNETR"):
        find_weights({}, "swin", "tiny", "T")


def test_set_weights_records_the_export_in_the_plans(tmp_path):
    from mim_nnunet.pretrained_weights import set_plans_weights
    plans = tmp_path / "nnUNetPlans.json"
    plans.write_text(json.dumps({"dataset_name": "D", "configurations": {}}))
    export = hybrid_export(tmp_path)
    set_plans_weights(plans, "hybrid", export, log=lambda *_: None)
    written = json.loads(plans.read_text())
    assert written["dataset_name"] == "D" and written[PLANS_KEY] == {"hybrid": str(export.resolve())}
    assert find_weights(written, "hybrid", "tiny", "T") == (export.resolve(), f"the plans' {PLANS_KEY}['hybrid']")


def test_encoder_learning_rate_scale_splits_the_groups():
    net = MiMUNETR(1, 2, (32, 32, 32), size="tiny", feature_size=12)
    opt = build_adamw(net, 1e-3, 0.01, (0.9, 0.999), scaled_prefix="backbone.", lr_scale=0.1)
    lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    for name, p in net.named_parameters():
        assert lr_of[id(p)] == pytest.approx(1e-4 if name.startswith("backbone.") else 1e-3), name
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(net.parameters()))
