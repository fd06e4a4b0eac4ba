import pytest
import torch
from monai.networks.nets import SwinUNETR

from mim_nnunet.networks import SWINUNETR_CLASS_NAME, build_network


def test_swinunetr_from_plans_record_matches_monai():
    net = build_network(SWINUNETR_CLASS_NAME, {"feature_size": 12}, num_input_channels=2, num_output_channels=3)
    reference = SwinUNETR(in_channels=2, out_channels=3, feature_size=12)
    ours, theirs = net.state_dict(), reference.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(ours[k].shape == theirs[k].shape for k in ours)
    x = torch.randn(1, 2, 64, 32, 64)                  # non-cubic, multiples of 32
    with torch.no_grad():
        assert net.eval()(x).shape == (1, 3, 64, 32, 64)


def test_unknown_network_and_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="does not build"):
        build_network("dynamic_network_architectures.architectures.unet.PlainConvUNet", {}, 1, 2)
    with pytest.raises(ValueError, match="multiple of 12"):
        build_network(SWINUNETR_CLASS_NAME, {"feature_size": 16}, 1, 2)
    with pytest.raises(ValueError, match="unknown SwinUNETR arguments"):
        build_network(SWINUNETR_CLASS_NAME, {"img_size": 96}, 1, 2)


def test_the_networks_package_imports_without_monai():
    """``import monai`` loads all of MONAI (seconds): commands that only read the networks' names and constants
    (plans-variant, recipe-plans) must not pay for it; building a network imports it (every build test here).
    In a fresh interpreter: this one has MONAI loaded."""
    import subprocess
    import sys
    code = ("import sys; import mim_nnunet.finetune.plans_variants, mim_nnunet.downstream.recipes, "
            "mim_nnunet.networks; print('monai' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, encoding="utf-8", errors="replace",
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["False"]
