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
