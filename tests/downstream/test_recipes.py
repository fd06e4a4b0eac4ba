"""The recipes of plans/downstream: one per segmentation dataset of the paper's Table 2, each complete and loadable,
each naming a converter we ship or a stock nnU-Net command; bad recipe files are one-line errors."""

import json

import pytest

from mim_nnunet.downstream.converters import DATASETS
from mim_nnunet.downstream.recipes import (
    RecipeError,
    available_recipes,
    load_recipe,
    variant_name,
    window,
)

# The 12 segmentation datasets of Table 2 (CC-CCII, the 13th row, is a classification task).
TABLE2_SEGMENTATION = {"btcv", "mmwhs_ct", "msd_task09_spleen", "amos22", "flare22", "msd_task03_liver",
                       "msd_task06_lung", "msd_task07_pancreas", "msd_task08_hepaticvessel", "msd_task10_colon",
                       "covid19_20", "brats21"}


def test_one_recipe_per_segmentation_dataset_of_table2():
    assert set(available_recipes()) == TABLE2_SEGMENTATION


@pytest.mark.parametrize("name", sorted(TABLE2_SEGMENTATION))
def test_every_recipe_loads_and_says_how_the_dataset_reaches_nnunet(name):
    recipe = load_recipe(name)
    assert recipe["name"] == name and recipe["source"] and isinstance(recipe["unknown"], list)
    convert = recipe["nnunet"]["convert"]
    if recipe["nnunet"]["stock"]:
        assert convert.startswith(("nnUNetv2_convert_MSD_dataset", "python -m nnunetv2.dataset_conversion."))
    else:
        assert convert.split()[:3] == ["mim_nnunet", "convert", name] and name in DATASETS
        assert recipe["nnunet"]["dataset_id"] == DATASETS[name].dataset_id
    if recipe["modality"] == "CT":
        lo, hi = window(recipe)
        assert hi > lo
    else:
        assert window(recipe) is None and recipe["intensity"]["scheme"] == "zscore"
    if not recipe["published"]:                      # not guessed: the gap is said
        assert any("published" in u for u in recipe["unknown"])


def test_converted_datasets_have_recipes_of_the_same_name():
    assert set(DATASETS) <= set(available_recipes())     # reproduce_paper.py finds the recipe by converter name


def test_bad_recipe_files_are_one_line_errors(tmp_path):
    good = load_recipe("btcv")
    cases = [
        ({k: v for k, v in good.items() if k != "spacing_mm"}, "missing field(s) spacing_mm"),
        ({**good, "spacing_mm": [1.5, 1.5]}, "'spacing_mm' must be three positive numbers"),
        ({**good, "crop_size": [96, 96, 96.5]}, "'crop_size' must be whole voxels"),
        ({**good, "intensity": {"scheme": "ct_window", "window_hu": [250, -175]}}, "'window_hu' must be [lower, upper]"),
        ({**good, "intensity": {"scheme": "minmax"}}, "intensity scheme 'minmax'"),
    ]
    for i, (recipe, message) in enumerate(cases):
        path = tmp_path / f"r{i}.json"
        path.write_text(json.dumps(recipe), encoding="utf-8")
        with pytest.raises(RecipeError) as exc:
            load_recipe(str(path))
        assert message in str(exc.value) and str(path) in str(exc.value) and "\n" not in str(exc.value)
    broken = tmp_path / "broken.json"
    broken.write_text("{", encoding="utf-8")
    with pytest.raises(RecipeError, match="not valid JSON"):
        load_recipe(str(broken))
    with pytest.raises(RecipeError, match="recipe 'nope': not found; available: amos22, brats21, btcv"):
        load_recipe("nope")


def test_variant_name():
    assert variant_name(load_recipe("btcv")) == "nnUNetPlans_btcv"
    assert variant_name(load_recipe("btcv"), "nnUNetResEncUNetMPlans") == "nnUNetResEncUNetMPlans_btcv"
