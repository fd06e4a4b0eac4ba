"""MiMUNETR: the release's fine-tuning names and shapes, any patch of multiples of 32, C channels."""

import json
from pathlib import Path

import pytest
import torch

from mim_nnunet.networks import MIMUNETR_CLASS_NAME, MiMUNETR, build_network

KEYS = json.loads((Path(__file__).parents[1] / "fixtures" / "official_mim_keys.json").read_text(encoding="utf-8"))


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


def test_built_from_a_plans_record_and_bad_arguments_are_clear_errors():
    net = build_network(MIMUNETR_CLASS_NAME, {"size": "tiny", "feature_size": 12, "img_size": [32, 32, 64]}, 1, 4)
    with torch.no_grad():
        assert net.eval()(torch.randn(2, 1, 32, 32, 64)).shape == (2, 4, 32, 32, 64)
    with pytest.raises(ValueError, match="needs img_size"):
        build_network(MIMUNETR_CLASS_NAME, {"size": "tiny"}, 1, 2)
    with pytest.raises(ValueError, match="unknown MiMUNETR arguments in the plans' arch_kwargs: \\['depth'\\]"):
        build_network(MIMUNETR_CLASS_NAME, {"img_size": [32] * 3, "depth": 3}, 1, 2)
    with pytest.raises(ValueError, match="unknown hybrid size 'huge'"):
        MiMUNETR(1, 2, (32, 32, 32), size="huge")


@pytest.mark.parametrize("size, feature_size", [("tiny", 12), ("base", 48)])
def test_decoder_is_monai_swinunetr_decoder(size, feature_size):
    from monai.networks.nets import SwinUNETR
    ours = MiMUNETR(2, 5, (64, 64, 64), size=size, feature_size=feature_size).state_dict()
    theirs = SwinUNETR(in_channels=2, out_channels=5, feature_size=feature_size).state_dict()
    decoder = {k: tuple(v.shape) for k, v in ours.items() if not k.startswith("backbone.")}
    reference = {k: tuple(v.shape) for k, v in theirs.items() if not k.startswith("swinViT.")}
    assert decoder == reference


def test_the_decoder_sees_layer_normalised_features():
    torch.manual_seed(0)
    net = MiMUNETR(1, 2, (32, 32, 64), size="tiny", feature_size=12).eval()
    x = torch.randn(1, 1, 32, 32, 64)
    seen = {}
    hooks = [getattr(net, name).register_forward_pre_hook(lambda m, args, name=name: seen.setdefault(name, args))
             for name in ("encoder2", "encoder3", "encoder4", "encoder10", "decoder5")]
    with torch.no_grad():
        net(x)
        raw = net.backbone(x)
    for h in hooks:
        h.remove()
    inputs = [seen["encoder2"][0], seen["encoder3"][0], seen["encoder4"][0], seen["decoder5"][1], seen["encoder10"][0]]
    for fed, r in zip(inputs, raw):
        mean = r.mean(dim=1, keepdim=True)
        var = r.var(dim=1, unbiased=False, keepdim=True)
        expected = (r - mean) / torch.sqrt(var + 1e-5)            # LayerNorm over channels, no weights
        assert torch.allclose(fed, expected, atol=1e-5)
        assert not torch.allclose(fed, r, atol=1e-2)              # the raw features differ


def test_fresh_network_is_initialised_as_the_release():
    torch.manual_seed(0)
    net = MiMUNETR(1, 2, (96, 96, 96), size="base", feature_size=48)
    b = net.backbone
    depth = len(b.blocks4)
    assert b.blocks4[0].attn.qkv.weight.std().item() == pytest.approx(0.02, rel=0.05)  # trunc. normal
    for k in (0, 5, depth - 1):                                   # depth rescale of the output projections
        for w in (b.blocks4[k].attn.proj.weight, b.blocks4[k].mlp.fc2.weight):
            assert w.std().item() == pytest.approx(0.02 / (2 * (k + 1)) ** 0.5, rel=0.08)
    stem = b.patch_embed1.proj.weight                             # PyTorch's default: U(-1/sqrt(fan_in), ..)
    fan_in = stem[0].numel()
    assert stem.abs().max().item() <= 1 / fan_in ** 0.5 + 1e-7
    assert stem.std().item() == pytest.approx(1 / (3 * fan_in) ** 0.5, rel=0.25)
    rates = [blk.drop_path.p for stage in (b.blocks1, b.blocks2, b.blocks3, b.blocks4) for blk in stage]
    assert len(rates) == 17 and rates == pytest.approx(torch.linspace(0, 0.2, 17).tolist())


def test_plans_of_0_1_0_rebuild_its_network():
    legacy = build_network(MIMUNETR_CLASS_NAME, {"size": "tiny", "feature_size": 12, "drop_path_rate": 0.2,
                                                 "norm_name": "instance", "img_size": [32, 32, 64]}, 1, 2)
    assert legacy.layout == "mim-nnunet-0.1" and hasattr(legacy, "encoder0") and hasattr(legacy, "decoder0")
    current = build_network(MIMUNETR_CLASS_NAME, {"size": "tiny", "feature_size": 12, "layout": "swinunetr",
                                                  "img_size": [32, 32, 32]}, 1, 2)
    assert hasattr(current, "encoder10") and not hasattr(current, "encoder0")
    with torch.no_grad():
        assert legacy.eval()(torch.randn(1, 1, 32, 32, 64)).shape == (1, 2, 32, 32, 64)
