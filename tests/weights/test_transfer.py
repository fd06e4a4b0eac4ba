"""Weight transfer into the segmentation networks with its pre-flight check."""

import pytest
import torch
import torch.nn.functional as F
from monai.networks.nets import SwinUNETR

from helpers.exports import hybrid_export
from mim_nnunet.backbones import build_encoder
from mim_nnunet.networks import MiMUNETR
from mim_nnunet.weights.export import export_encoder, load_export
from mim_nnunet.weights.transfer import TransferError, inflate_stem, transfer


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
    from mim_nnunet.weights.transfer import interpolate_pos_embed
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
    # another size: both named (not "0.0 % ... shapes differ"), with what fits instead
    with pytest.raises(TransferError) as wrong_size:
        transfer(net, *load_export(base_path), str(base_path), trainer="nnUNetTrainerMiM_tiny_1epoch")
    assert str(wrong_size.value) == (f"{base_path}: the export is hybrid 'base' (feature width 48), "
                                     f"nnUNetTrainerMiM_tiny_1epoch builds hybrid 'tiny' (feature width 12): use "
                                     f"nnUNetTrainerMiM or a 'tiny' export")
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


def test_intensities_unlike_the_exports_are_warned_about(tmp_path):
    path = hybrid_export(tmp_path)                      # pre-trained on CT, window [-1000, 1000]
    state, record = load_export(path)
    zscore = {"0": {"mean": 62.0, "std": 140.0, "percentile_00_5": -950.0, "percentile_99_5": 1200.0}}
    window = {"0": {"mean": -1000.0, "std": 2000.0, "percentile_00_5": -1000.0, "percentile_99_5": 1000.0}}
    narrow = {"0": {"mean": -175.0, "std": 425.0, "percentile_00_5": -175.0, "percentile_99_5": 250.0}}
    found = {}
    for name, props in (("zscore", zscore), ("window", window), ("narrow", narrow)):
        net = MiMUNETR(1, 2, (32, 32, 32), size="tiny", feature_size=12)
        report = transfer(net, state, record, str(path), normalization=["CTNormalization"],
                          intensity_properties=props)
        found[name] = [w for w in report.warnings if "scaled to [0, 1]" in w]
    assert found["window"] == []
    assert len(found["zscore"]) == 1 and "z-score of the dataset's foreground (mean 62, std 140 HU)" in found["zscore"][0]
    assert "-ct_window -1000 1000" in found["zscore"][0]
    assert len(found["narrow"]) == 1 and "window [-175.0, 250.0] HU" in found["narrow"][0]


def test_resenc_export_sets_every_alias_of_each_tensor_and_counts_each_tensor_once():
    """nnU-Net's ResidualEncoderUNet names each encoder tensor several times (``conv``/``all_modules.0``,
    ``encoder.*``/``decoder.encoder.*``); the transfer gives every name the export's value and the table
    counts each tensor once."""
    from mim_nnunet.networks.resenc_unet import build_resenc_unet
    encoder = build_encoder("resenc", "tiny", 1, (64, 32, 32))[0]
    with torch.no_grad():
        for p in encoder.parameters():
            p.normal_()                                   # unlike any fresh initialisation
    state = {k: v.clone() for k, v in encoder.export_state().items()}
    record = {"backbone": "resenc", **encoder.export_record()}
    network = build_resenc_unet(record["architecture"], 2, 3)
    decoder_before = {k: v.clone() for k, v in network.decoder.state_dict().items() if not k.startswith("encoder.")}
    report = transfer(network, state, record, "resenc.safetensors")
    full = network.state_dict()
    stem = "stem.convs.0.conv.weight"
    assert torch.equal(full["encoder.stem.convs.0.all_modules.0.weight"], inflate_stem(state[stem], 2))
    assert torch.equal(full["decoder.encoder.stem.convs.0.conv.weight"], inflate_stem(state[stem], 2))
    for key, value in state.items():
        if key != stem:
            assert torch.equal(full["encoder." + key], value) and torch.equal(full["decoder.encoder." + key], value)
    for key, value in decoder_before.items():            # the decoder keeps its initialisation
        assert torch.equal(network.decoder.state_dict()[key], value)
    # counts, from the modules themselves: encoder tensors once, the decoder's own tensors once
    encoder_numel = sum(p.numel() for p in network.encoder.parameters()) + \
        sum(b.numel() for b in network.encoder.buffers() if b.is_floating_point())
    decoder_ids = {id(p) for p in network.encoder.parameters()}
    decoder_numel = sum(p.numel() for p in network.decoder.parameters() if id(p) not in decoder_ids)
    assert report.encoder_fraction == 1.0 and report.encoder_expected == encoder_numel
    assert sum(report.new.values()) == decoder_numel
