import copy

import pytest
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from helpers.plans_factory import make_plans
from mim_nnunet.common.errors import PlansError
from mim_nnunet.finetune.plans import RECORD_KEY, adapt_configuration, round_patch_size


@pytest.mark.parametrize("patch, expected", [
    ([64, 64, 64], [64, 64, 64]),        # already multiples: unchanged
    ([80, 160, 100], [96, 160, 96]),     # 80 is a tie -> up; 100 is nearer 96 than 128
    ([112, 47, 49], [128, 32, 64]),      # 112 tie -> 128; 47 -> 32; 49 -> 64
    ([20, 10, 40], [32, 32, 64]),        # never below 32; all-32 would leave one bottleneck voxel
    ([33, 40, 20], [32, 64, 32]),        # ... so the largest axis is doubled
])
def test_round_patch_size_by_hand(patch, expected):
    assert round_patch_size(patch, 32) == expected


def test_adaptation_records_network_and_patch_in_the_plans():
    plans = make_plans(patch_3d=(80, 160, 100))
    original = copy.deepcopy(plans)
    adapted, cm = adapt_configuration(plans, "3d_fullres", "monai.networks.nets.SwinUNETR", {"feature_size": 12}, 32,
                                      "MyTrainer")
    assert cm.patch_size == [96, 160, 96]
    assert cm.network_arch_class_name == "monai.networks.nets.SwinUNETR"
    assert cm.network_arch_init_kwargs == {"feature_size": 12}
    # the adapted copy carries it (the plans.json nnU-Net saves next to the model); the input is unchanged
    stored = PlansManager(adapted).get_configuration("3d_fullres")
    assert stored.patch_size == [96, 160, 96]
    assert adapted["configurations"]["3d_fullres"][RECORD_KEY]["original_patch_size"] == [80, 160, 100]
    assert plans == original
    # other configurations untouched
    assert adapted["configurations"]["3d_lowres"]["architecture"]["network_class_name"].endswith("PlainConvUNet")


def test_adaptation_is_idempotent_on_already_adapted_plans():
    plans = make_plans(patch_3d=(80, 160, 100))
    once, _ = adapt_configuration(plans, "3d_fullres", "X", {}, 32, "T")
    twice, cm = adapt_configuration(once, "3d_fullres", "X", {}, 32, "T")   # e.g. plans.json of a model folder
    assert cm.patch_size == [96, 160, 96]
    assert twice["configurations"]["3d_fullres"][RECORD_KEY]["original_patch_size"] == [80, 160, 100]


def test_adaptation_of_an_inheriting_configuration():
    plans = make_plans(patch_3d=(80, 160, 100))
    adapted, cm = adapt_configuration(plans, "3d_cascade_fullres", "X", {"a": 1}, 32, "T")
    assert cm.patch_size == [96, 160, 96] and cm.previous_stage_name == "3d_lowres"
    assert adapted["configurations"]["3d_cascade_fullres"]["inherits_from"] == "3d_fullres"
    assert adapted["configurations"]["3d_fullres"]["patch_size"] == [80, 160, 100]   # parent untouched


def test_2d_configuration_is_a_clear_error():
    with pytest.raises(PlansError, match=r"MyTrainer is 3D only: configuration '2d'"):
        adapt_configuration(make_plans(), "2d", "X", {}, 32, "MyTrainer")
