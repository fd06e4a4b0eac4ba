"""Plans variants: the window through CTNormalization's intensity properties on CT channels only, axis order,
the source plans never written, and (slow) nnU-Net's own preprocessing of the demo's real CT with a recipe
variant, checked voxel by voxel against the window formula."""

import copy
import hashlib
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from helpers.commands import command, plan_with_fewer_samples
from helpers.plans_factory import DATASET_JSON, make_plans
from mim_nnunet.common.errors import PlansError
from mim_nnunet.finetune.plans_variants import (
    VARIANT_KEY,
    from_plans_axes,
    to_plans_axes,
    window_properties,
    write_plans_variant,
)

NAME = "Dataset999_Plans"
QUIET = {"log": lambda *_: None}


def window(x, lo, hi):
    """The formula, independent of nnU-Net: clip to [lo, hi] HU, scale to [0, 1]."""
    return (np.clip(np.asarray(x, np.float64), lo, hi) - lo) / (hi - lo)


def test_axis_order_by_hand():
    assert to_plans_axes([1.5, 1.6, 2.0], [0, 1, 2]) == [2.0, 1.6, 1.5]       # (x, y, z) -> nnU-Net's (z, y, x)
    assert to_plans_axes([1.5, 1.6, 2.0], [2, 0, 1]) == [1.5, 2.0, 1.6]       # then transpose_forward
    for tf in ([0, 1, 2], [1, 0, 2], [2, 0, 1], [0, 2, 1]):
        assert from_plans_axes(to_plans_axes([7, 8, 9], tf), tf) == [7, 8, 9]
    with pytest.raises(PlansError, match="three values"):
        to_plans_axes([1, 2], [0, 1, 2])


@pytest.mark.parametrize("lo, hi", [(-1000, 1000), (-175, 250), (0, 1700)])
def test_ctnormalization_with_window_properties_is_the_window_formula(lo, hi):
    from nnunetv2.preprocessing.normalization.default_normalization_schemes import (
        CTNormalization,
    )
    x = np.random.default_rng(0).uniform(-2000, 3000, (7, 9, 11)).astype(np.float32)
    out = CTNormalization(use_mask_for_norm=False, intensityproperties=window_properties(lo, hi)).run(x.copy())
    np.testing.assert_allclose(out, window(x, lo, hi), rtol=0, atol=1e-6)
    assert out.min() == 0.0 and out.max() == 1.0
    with pytest.raises(PlansError, match="upper bound must be above"):
        window_properties(hi, lo)


@pytest.fixture
def planned(nnunet_dirs):
    """A planned dataset with a CT channel and an MRI channel (z-scored)."""
    plans = make_plans()
    for config in plans["configurations"].values():
        if "normalization_schemes" in config:
            config["normalization_schemes"] = ["CTNormalization", "ZScoreNormalization"]
            config["use_mask_for_norm"] = [False, False]
    props = {"max": 3000.0, "mean": 50.0, "median": 40.0, "min": -1024.0, "percentile_00_5": -900.0,
             "percentile_99_5": 1500.0, "std": 300.0}
    plans["foreground_intensity_properties_per_channel"] = {"0": dict(props), "1": {**props, "mean": 7.0}}
    folder = nnunet_dirs["nnUNet_preprocessed"] / NAME
    folder.mkdir()
    (folder / "nnUNetPlans.json").write_text(json.dumps(plans), encoding="utf-8")
    (folder / "dataset.json").write_text(json.dumps({**DATASET_JSON, "channel_names": {"0": "CT", "1": "T1"}}),
                                         encoding="utf-8")
    return folder, plans


def test_window_variant_changes_ct_channels_only_and_never_the_source(planned):
    folder, source = planned
    before = hashlib.sha256((folder / "nnUNetPlans.json").read_bytes()).hexdigest()
    out = write_plans_variant(NAME, "nnUNetPlans_win", ct_window=(-1000, 1000), **QUIET)
    assert hashlib.sha256((folder / "nnUNetPlans.json").read_bytes()).hexdigest() == before
    variant = json.loads(out.read_text(encoding="utf-8"))
    assert out.name == "nnUNetPlans_win.json" and variant["plans_name"] == "nnUNetPlans_win"
    props = variant["foreground_intensity_properties_per_channel"]
    assert {k: props["0"][k] for k in ("percentile_00_5", "percentile_99_5", "mean", "std")} == \
        {"percentile_00_5": -1000.0, "percentile_99_5": 1000.0, "mean": -1000.0, "std": 2000.0}
    assert props["1"] == source["foreground_intensity_properties_per_channel"]["1"]     # the MRI channel
    for name, config in variant["configurations"].items():
        if "data_identifier" in config:                     # never the source's preprocessed folders
            assert config["data_identifier"] == f"nnUNetPlans_win_{name}"
    assert variant["configurations"]["3d_cascade_fullres"] == source["configurations"]["3d_cascade_fullres"]
    stripped = {k: v for k, v in copy.deepcopy(variant).items() if k not in (VARIANT_KEY, "plans_name")}
    for config in stripped["configurations"].values():
        config.pop("data_identifier", None)
    stripped["foreground_intensity_properties_per_channel"]["0"] = source["foreground_intensity_properties_per_channel"]["0"]
    expected = {k: v for k, v in copy.deepcopy(source).items() if k != "plans_name"}
    for config in expected["configurations"].values():
        config.pop("data_identifier", None)
    assert stripped == expected                              # nothing else changed
    record = variant[VARIANT_KEY]
    assert record["ct_channels"] == [0] and record["ct_window"] == [-1000.0, 1000.0]
    assert record["source_intensity_properties"]["0"] == source["foreground_intensity_properties_per_channel"]["0"]


def test_variant_errors_are_one_line(planned):
    folder, source = planned
    cases = [
        (dict(new_plans_name="nnUNetPlans", ct_window=(0, 1)), "a variant never overwrites its source"),
        (dict(new_plans_name="bad name", ct_window=(0, 1)), "plans name 'bad name'"),
        (dict(new_plans_name="v", ct_window=(0, 1), configurations=("3d_huge",)), "no configuration '3d_huge'"),
        (dict(new_plans_name="v", ct_window=(5, 5)), "the upper bound must be above the lower one"),
    ]
    for kwargs, message in cases:
        with pytest.raises(PlansError) as exc:
            write_plans_variant(NAME, **kwargs, **QUIET)
        assert message in str(exc.value) and "\n" not in str(exc.value)
    plans = json.loads((folder / "nnUNetPlans.json").read_text(encoding="utf-8"))
    for config in plans["configurations"].values():
        if "normalization_schemes" in config:
            config["normalization_schemes"] = ["ZScoreNormalization", "ZScoreNormalization"]
    (folder / "nnUNetPlans.json").write_text(json.dumps(plans), encoding="utf-8")
    with pytest.raises(PlansError, match="no CT channel in '3d_fullres'.*applies to CT channels only"):
        write_plans_variant(NAME, "v", ct_window=(0, 1), **QUIET)
    assert not (folder / "v.json").exists()


# ---------------------------------------------------------------------------------------------------------------
# nnU-Net's preprocessing of the demo's real CT (TotalSegmentator 2.18.0 reference CT, cached by scripts/setup_env.sh)

def run(cmd, env, cwd):
    result = subprocess.run([str(c) for c in cmd], env=env, cwd=cwd, capture_output=True, encoding="utf-8",
                            errors="replace", timeout=1200)
    assert result.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def load_case(folder: Path, case: str):
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
    dataset = infer_dataset_class(str(folder))(str(folder))
    data, _, _, properties = dataset.load_case(case)
    return np.asarray(data[0], np.float32), properties


@pytest.fixture(scope="module")
def demo_ct(module_tmp, demo_data):
    """The session's demo dataset (read only: nnU-Net reads nnUNet_raw) planned into this module's folders."""
    from mim_nnunet.demo.data import demo_spec
    work = module_tmp("variant")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("nnUNet_", "MIM_"))}
    dataset = demo_data["dataset"]
    env["nnUNet_raw"] = str(dataset.parent)
    for name in ("nnUNet_preprocessed", "nnUNet_results"):
        env[name] = str(work / name)
    did = demo_spec()["dataset_id"]
    # nnU-Net's fingerprint and plans; the variants replace the intensity statistics it samples with a window
    plan_with_fewer_samples(["-d", did, "-c", "3d_fullres", "-npfp", "1", "--no_pp"], env, work)
    return {"env": env, "work": work, "raw": dataset, "id": did, "pre": work / "nnUNet_preprocessed" / dataset.name}


def original(raw: Path, case: str, plans: dict, properties: dict) -> np.ndarray:
    """The raw CT as nnU-Net sees it before resampling: (z, y, x), transposed, cropped to its bounding box."""
    array = sitk.GetArrayFromImage(sitk.ReadImage(str(raw / "imagesTr" / f"{case}_0000.nii.gz"))).astype(np.float64)
    array = array.transpose(plans["transpose_forward"])
    return array[tuple(slice(lo, hi) for lo, hi in properties["bbox_used_for_cropping"])]


@pytest.mark.slow
def test_window_variant_preprocesses_real_ct_to_exactly_the_window_formula(demo_ct):
    """At the CT's own spacing (3 mm: no resampling) nnU-Net's preprocessed voxels are the formula, voxel by voxel."""
    env, work, pre = demo_ct["env"], demo_ct["work"], demo_ct["pre"]
    before = (pre / "nnUNetPlans.json").read_bytes()
    run([command("mim_nnunet"), "plans-variant", "-d", demo_ct["id"], "-plans_name", "pretrain_window", "-ct_window", "-1000", "1000",
         "-spacing", "3", "3", "3"], env, work)
    run([command("nnUNetv2_preprocess"), "-d", demo_ct["id"], "-plans_name", "pretrain_window", "-c", "3d_fullres",
         "-np", "1"], env, work)
    assert (pre / "nnUNetPlans.json").read_bytes() == before
    assert not (pre / "nnUNetPlans_3d_fullres").exists()            # the source plans' folder is untouched
    plans = json.loads((pre / "pretrain_window.json").read_text(encoding="utf-8"))
    data, properties = load_case(pre / "pretrain_window_3d_fullres", "abdomen")
    raw = original(demo_ct["raw"], "abdomen", plans, properties)
    assert data.shape == raw.shape                                   # 3 mm CT at 3 mm: not resampled
    np.testing.assert_allclose(data, window(raw, -1000, 1000), rtol=0, atol=1e-6)
    assert (raw < -1000).any() and (raw > 1000).any()                # both ends of the clip are exercised
    assert data.min() == 0.0 and data.max() == 1.0


@pytest.mark.slow
def test_recipe_variant_preprocesses_real_ct_to_the_recipe_spacing_and_window(demo_ct):
    """The BTCV recipe: spacing (1.5, 1.5, 2.0) mm, HU window [-175, 250]; expected voxels = the formula on the raw
    CT, then the third-order resize nnU-Net documents (skimage, edge mode, no anti-aliasing)."""
    from nnunetv2.preprocessing.resampling.default_resampling import compute_new_shape
    from skimage.transform import resize
    env, work, pre = demo_ct["env"], demo_ct["work"], demo_ct["pre"]
    run([command("mim_nnunet"), "recipe-plans", "-d", demo_ct["id"], "btcv"], env, work)
    run([command("nnUNetv2_preprocess"), "-d", demo_ct["id"], "-plans_name", "nnUNetPlans_btcv", "-c", "3d_fullres",
         "-np", "1"], env, work)
    plans = json.loads((pre / "nnUNetPlans_btcv.json").read_text(encoding="utf-8"))
    config = plans["configurations"]["3d_fullres"]
    tf = plans["transpose_forward"]
    assert config["spacing"] == [[2.0, 1.5, 1.5][i] for i in tf]            # (x, y, z) = (1.5, 1.5, 2.0) mm
    assert config["patch_size"] == [96, 96, 96] and config["data_identifier"] == "nnUNetPlans_btcv_3d_fullres"
    assert plans[VARIANT_KEY]["recipe"] == "btcv"
    for case in ("abdomen", "contrast"):
        data, properties = load_case(pre / "nnUNetPlans_btcv_3d_fullres", case)
        raw = original(demo_ct["raw"], case, plans, properties)
        spacing = [properties["spacing"][i] for i in tf]
        shape = compute_new_shape(raw.shape, spacing, config["spacing"])
        assert list(data.shape) == list(shape)
        expected = resize(window(raw, -175, 250), shape, order=3, mode="edge", anti_aliasing=False)
        np.testing.assert_allclose(data, expected, rtol=0, atol=1e-5)
        assert data.shape != raw.shape                                   # the case really was resampled


def _write_raw_image(path: Path, orientation: str) -> None:
    image = sitk.DICOMOrient(sitk.Image(4, 3, 2, sitk.sitkInt16), orientation)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))


def test_variant_records_training_orientations_and_warns_unless_all_ras(planned, nnunet_dirs):
    images = nnunet_dirs["nnUNet_raw"] / NAME / "imagesTr"
    for case, orientation in (("c1", "RAS"), ("c2", "LPS"), ("c3", "LPS")):
        _write_raw_image(images / f"{case}_0000.nii.gz", orientation)
    _write_raw_image(images / "c1_0001.nii.gz", "LAS")          # other channels are not counted
    (images / "c4_0000.nii.gz").write_bytes(b"not an image")    # unreadable: left to nnU-Net's planning
    lines = []
    out = write_plans_variant(NAME, "v1", ct_window=(-175, 250), log=lines.append)
    record = json.loads(out.read_text(encoding="utf-8"))[VARIANT_KEY]
    assert record["training_orientations"] == {"LPS": 2, "RAS": 1}
    warnings = [line for line in lines if line.startswith("WARNING")]
    assert len(warnings) == 1 and "2 of 3 training images are not RAS (LPS: 2)" in warnings[0]
    assert "\n" not in warnings[0]

    for case in ("c2", "c3"):
        _write_raw_image(images / f"{case}_0000.nii.gz", "RAS")
    lines = []
    out = write_plans_variant(NAME, "v2", ct_window=(-175, 250), log=lines.append)
    assert json.loads(out.read_text(encoding="utf-8"))[VARIANT_KEY]["training_orientations"] == {"RAS": 3}
    assert not [line for line in lines if line.startswith("WARNING")]


def _export(results: Path, backbone: str, size: str) -> Path:
    """An export of mim_pretrain where fine-tuning looks for it: only its record matters here."""
    path = results / "MiM_demo" / f"{backbone}_{size}" / "export" / f"encoder_{backbone}_{size}.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    path.with_suffix(".json").write_text(json.dumps({"backbone": backbone, "size": size}), encoding="utf-8")
    return path


def test_next_line_suggests_a_fold_the_dataset_has_and_a_trainer_of_the_exports_size(planned, nnunet_dirs,
                                                                                       monkeypatch):
    """nnU-Net's own 5-fold split needs 5 training cases: 2 cases -> fold 'all'; only a tiny export ->
    a _tiny_ variant (nnUNetTrainerMiM looks for a 'base' export and would stop)."""
    from mim_nnunet.finetune.plans_variants import next_commands
    monkeypatch.delenv("MIM_PRETRAINED_WEIGHTS", raising=False)
    folder, _ = planned
    (folder / "dataset.json").write_text(json.dumps({**DATASET_JSON, "numTraining": 2}), encoding="utf-8")
    write_plans_variant(NAME, "v", ct_window=(-175, 250), **QUIET)

    def train_line():
        return next(line for line in next_commands(NAME, "v").splitlines() if line.startswith("nnUNetv2_train"))
    assert train_line() == f"nnUNetv2_train {NAME} 3d_fullres all -tr nnUNetTrainerMiM -p v"
    assert "no MiM export found yet" in next_commands(NAME, "v")
    _export(nnunet_dirs["nnUNet_results"], "hybrid", "tiny")
    assert train_line() == f"nnUNetv2_train {NAME} 3d_fullres all -tr nnUNetTrainerMiM_tiny_10epochs -p v"
    assert "only hybrid export found is 'tiny'" in next_commands(NAME, "v")
    _export(nnunet_dirs["nnUNet_results"], "hybrid", "base")
    assert train_line() == f"nnUNetv2_train {NAME} 3d_fullres all -tr nnUNetTrainerMiM -p v"
    # five training cases, or a splits file (the literature's split), give fold 0
    (folder / "dataset.json").write_text(json.dumps({**DATASET_JSON, "numTraining": 5}), encoding="utf-8")
    assert train_line() == f"nnUNetv2_train {NAME} 3d_fullres 0 -tr nnUNetTrainerMiM -p v"
    (folder / "dataset.json").write_text(json.dumps({**DATASET_JSON, "numTraining": 3}), encoding="utf-8")
    (folder / "splits_final.json").write_text(json.dumps([{"train": ["a", "b"], "val": ["c"]}]), encoding="utf-8")
    assert train_line() == f"nnUNetv2_train {NAME} 3d_fullres 0 -tr nnUNetTrainerMiM -p v"


def test_plans_variant_cli_next_line_on_a_two_case_dataset_with_a_tiny_export(planned, nnunet_dirs, monkeypatch):
    monkeypatch.delenv("MIM_PRETRAINED_WEIGHTS", raising=False)
    folder, _ = planned
    (folder / "dataset.json").write_text(json.dumps({**DATASET_JSON, "channel_names": {"0": "CT", "1": "T1"},
                                                     "numTraining": 2}), encoding="utf-8")
    _export(nnunet_dirs["nnUNet_results"], "hybrid", "tiny")
    result = subprocess.run([command("mim_nnunet"), "plans-variant", "-d", NAME, "-plans_name", "v", "-ct_window", "-175", "250"],
                            capture_output=True, encoding="utf-8", errors="replace", timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"nnUNetv2_train {NAME} 3d_fullres all -tr nnUNetTrainerMiM_tiny_10epochs -p v" in result.stdout
    assert "5-fold split needs at least 5" in result.stdout
