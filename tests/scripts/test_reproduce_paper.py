"""scripts/reproduce_paper.py: the table layout (fast) and the whole protocol at tiny size on a converted synthetic
BTCV (slow): convert -> plan -> recipe variant -> preprocess -> splits with a 50 % label fraction -> MiM and
scratch fine-tuning -> DSC/NSD on the validation fold -> table and JSON; a rerun skips the finished training.
(Fraction 1 is fold 0 itself, see test_splits; it is left out here to keep the test to a few minutes.)"""

import json
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from helpers.commands import SCRIPTS, command, load_script, nnunet_env, run_main
from helpers.downstream_layouts import write_btcv

SCRIPT = SCRIPTS / "reproduce_paper.py"


def load():
    return load_script("reproduce_paper")


def test_table_has_a_row_per_method_then_the_papers_row():
    rp = load()
    classes = {1: "spleen", 2: "liver"}
    results = {"Scratch": {"trainer": "T0", "dsc": {"spleen": 0.5, "liver": 0.25}, "mean_dsc": 0.375, "mean_nsd": 0.1},
               "MiM": {"trainer": "T1", "dsc": {"spleen": 0.75}, "mean_dsc": 0.75, "mean_nsd": 0.5}}
    published = [{"table": "4", "method": "MiM", "fraction": 1.0, "dsc": {"per_class": {"liver": 96.1}, "mean": 90.0}},
                 {"table": "5", "method": "MiM", "fraction": 0.25, "dsc": {"mean": 80.0}}]
    table = rp.build_table("BTCV", results, classes, published, 1.0).splitlines()
    assert table[2] == "| Method | spleen | liver | Avg DSC (%) | Avg NSD (%) |"
    assert table[4] == "| Scratch (T0) | 50.00 | 25.00 | 37.50 | 10.00 |"
    assert table[5] == "| MiM (T1) | 75.00 | – | 75.00 | 50.00 |"
    assert table[6] == "| MiM, paper (Table 4) | – | 96.10 | 90.00 | – |"
    assert len(table) == 7                                     # the 25 % row belongs to another table
    per_fraction = {k: {"0.5": {"mean_dsc": 0.2}, "1.0": {"mean_dsc": 0.4}} for k in ("Scratch", "MiM")}
    assert rp.efficiency_table(per_fraction, [0.5, 1.0]).splitlines()[2] == "| Scratch | 20.00 | 40.00 |"


def test_reuse_digests_follow_what_data_and_models_depend_on():
    import copy

    from helpers.plans_factory import make_plans
    rp = load()
    plans = make_plans()
    plans["foreground_intensity_properties_per_channel"] = {"0": {"mean": 0.0, "std": 1.0}}
    data, model = rp.plans_digest(plans, "3d_fullres", True), rp.plans_digest(plans, "3d_fullres", False)
    bigger = copy.deepcopy(plans)
    bigger["configurations"]["3d_fullres"]["patch_size"] = [96, 96, 96]      # same data, another model
    assert rp.plans_digest(bigger, "3d_fullres", True) == data and rp.plans_digest(bigger, "3d_fullres", False) != model
    windowed = copy.deepcopy(plans)
    windowed["foreground_intensity_properties_per_channel"]["0"]["std"] = 2000.0   # other data
    assert rp.plans_digest(windowed, "3d_fullres", True) != data
    spaced = copy.deepcopy(plans)
    spaced["configurations"]["3d_fullres"]["spacing"] = [2.0, 1.5, 1.5]
    assert rp.plans_digest(spaced, "3d_fullres", True) != data


def dice(a, b):
    """Independent DSC: 2|A and B| / (|A| + |B|)."""
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def run(cmd, env, cwd):
    result = subprocess.run([str(c) for c in cmd], env=env, cwd=cwd, capture_output=True, encoding="utf-8",
                            errors="replace", timeout=1800)
    assert result.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result


@pytest.mark.slow
def test_reproduce_paper_end_to_end_at_tiny_size(tmp_path, mim_exports, monkeypatch, capsys):
    env = nnunet_env(tmp_path)
    src = write_btcv(tmp_path / "src", numbers=(1, 2, 3, 4, 35, 36), test=())
    run([command("mim_nnunet"), "convert", "btcv", src, "--allow_partial"], env, tmp_path)
    # the session's hybrid 'tiny' export (pre-trained by mim_pretrain on another CT dataset), given by -weights
    export = mim_exports["exports"]["hybrid"]
    # the BTCV recipe at a CPU size, with a published row made up for this test (not the paper's numbers)
    from mim_nnunet.downstream.recipes import load_recipe
    recipe = {**load_recipe("btcv"), "name": "btcv_tiny", "crop_size": [32, 32, 32],
              "published": [{"table": "5", "method": "MiM", "fraction": 0.5,
                             "dsc": {"per_class": {"spleen": 12.5}, "mean": 34.5}}]}
    recipe_file = tmp_path / "btcv_tiny.json"
    recipe_file.write_text(json.dumps(recipe), encoding="utf-8")
    out = tmp_path / "report"
    cmd = [sys.executable, SCRIPT, "-d", "501", "-recipe", recipe_file, "-size", "tiny", "-device", "cpu",
           "-fractions", "0.5", "-weights", export, "-np", "1", "-o", out]
    first = run(cmd, env, tmp_path)
    assert first.stdout.count("$ nnUNetv2_train") == 2          # MiM and scratch on the 50 % fold

    report = json.loads((out / "reproduce_Dataset501_BTCV.json").read_text(encoding="utf-8"))
    assert report["plans"] == "nnUNetPlans_btcv_tiny" and report["recipe"] == "btcv_tiny"
    assert report["split"]["fraction_folds"] == {"0.5": 1}
    pre = tmp_path / "nnUNet_preprocessed" / "Dataset501_BTCV"
    splits = json.loads((pre / "splits_final.json").read_text(encoding="utf-8"))
    assert splits[0] == {"train": ["BTCV_0001", "BTCV_0002", "BTCV_0003", "BTCV_0004"], "val": ["BTCV_0035", "BTCV_0036"]}
    assert len(splits[1]["train"]) == 2 and set(splits[1]["train"]) < set(splits[0]["train"])
    plans = json.loads((pre / "nnUNetPlans_btcv_tiny.json").read_text(encoding="utf-8"))
    assert plans["configurations"]["3d_fullres"]["spacing"] == [2.0, 1.5, 1.5]
    assert plans["foreground_intensity_properties_per_channel"]["0"]["percentile_99_5"] == 250.0
    results_root = tmp_path / "nnUNet_results" / "Dataset501_BTCV"
    labels = tmp_path / "nnUNet_raw" / "Dataset501_BTCV" / "labelsTr"
    for kind, trainer in (("MiM", "nnUNetTrainerMiM_tiny_1epoch"), ("Scratch", "nnUNetTrainerMiMScratch_tiny_1epoch")):
        result = report["results"][kind]["0.5"]
        assert result["trainer"] == trainer and result["fold"] == 1
        assert result["val_cases"] == ["BTCV_0035", "BTCV_0036"]
        assert result["train_cases"] == 2
        assert len(result["dsc"]) == 13 and all(0 <= v <= 1 for v in result["dsc"].values())
        fold_dir = results_root / f"{trainer}__nnUNetPlans_btcv_tiny__3d_fullres" / "fold_1"
        transfer = fold_dir / "mim_transfer.json"
        assert transfer.is_file() == (kind == "MiM")       # only the MiM network started from the export
        if kind == "MiM":
            assert json.loads(transfer.read_text(encoding="utf-8"))["how"] == "$MIM_PRETRAINED_WEIGHTS"
        for case in result["val_cases"]:               # per-case DSC against an independent computation
            pred = sitk.GetArrayFromImage(sitk.ReadImage(str(fold_dir / "validation" / f"{case}.nii.gz")))
            ref = sitk.GetArrayFromImage(sitk.ReadImage(str(labels / f"{case}.nii.gz")))
            for c in (1, 6):
                expected = 1.0 if not (pred == c).any() and not (ref == c).any() else dice(pred == c, ref == c)
                assert result["cases"][case][str(c)]["dsc"] == pytest.approx(expected, abs=1e-6)
    table = (out / "reproduce_Dataset501_BTCV.md").read_text(encoding="utf-8")
    assert "| Method | spleen | right kidney |" in table and "| MiM (nnUNetTrainerMiM_tiny_1epoch) |" in table
    assert "| MiM, paper (Table 5) | 12.50 |" in table and "### Label efficiency (mean DSC %)" in table

    # finished trainings are not repeated (the rerun through the script's main in this process; the commands it
    # runs still start as subprocesses)
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_extTrainer", "nnUNet_n_proc_DA",
                 "nnUNet_def_n_proc"):
        monkeypatch.setenv(name, env[name])
    monkeypatch.chdir(tmp_path)
    again = run_main(load().main, cmd[2:], capsys)
    assert again.returncode == 0 and "$ nnUNetv2_train" not in again.stdout
    assert json.loads((out / "reproduce_Dataset501_BTCV.json").read_text(encoding="utf-8"))["results"] == report["results"]
