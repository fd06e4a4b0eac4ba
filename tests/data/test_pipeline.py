"""The whole preparation: caching by manifest, leakage guard, and the two commands that run it."""

import json
import subprocess

import numpy as np
import pytest

from helpers.commands import SCRIPTS, command
from helpers.synthetic import write_dataset
from helpers.volumes import ct_array, write
from mim_nnunet.common.errors import MimError
from mim_nnunet.data.pipeline import prepare


def scans(folder, n=3):
    for i in range(n):
        write(ct_array((16, 24, 20), seed=i), folder / f"s{i}.nii.gz")
    return folder


def test_fingerprint_is_cached_until_the_data_changes(tmp_path, nnunet_dirs):
    folder = scans(tmp_path / "scans")
    logs = []
    first = prepare([str(folder)], name="cache", size="tiny", num_processes=1, log=logs.append)
    assert not any("fingerprint unchanged" in m for m in logs)
    logs.clear()
    second = prepare([str(folder)], name="cache", size="tiny", num_processes=1, log=logs.append)
    assert any("fingerprint unchanged" in m for m in logs) and second.store == first.store
    write(ct_array((16, 24, 20), seed=9), folder / "s0.nii.gz")            # same name, new content
    logs.clear()
    third = prepare([str(folder)], name="cache", size="tiny", num_processes=1, log=logs.append)
    assert not any("fingerprint unchanged" in m for m in logs) and third.store != first.store
    fp = json.loads((first.folder / "fingerprint.json").read_text(encoding="utf-8"))
    assert fp["manifest_hash"] == json.loads((first.folder / "manifest.json").read_text(encoding="utf-8"))["hash"]


def test_a_given_ct_window_is_planned_stored_apart_and_applied(tmp_path, nnunet_dirs):
    folder = scans(tmp_path / "scans", 1)
    spec = prepare([str(folder)], name="win", size="tiny", num_processes=1, log=lambda m: None)
    soft = prepare([str(folder)], name="win", size="tiny", num_processes=1, ct_window=(-175, 250), log=lambda m: None)
    assert soft.plan["intensity"]["CT"]["window"] == [-175.0, 250.0]
    assert "-ct_window" in soft.plan["explain"]["intensity"]
    assert spec.plan["intensity"]["CT"]["window"] == [-1000.0, 1000.0]
    assert soft.store != spec.store            # the default window's arrays are never reused
    case = spec.report["ok"][0]
    wide, narrow = (np.load(p.store / f"{case}.npy").astype(np.float64) for p in (spec, soft))
    hu = wide * 2000 - 1000                    # the default window maps [-1000, 1000] HU to [0, 1]
    assert np.allclose(narrow, (np.clip(hu, -175, 250) + 175) / 425, atol=2e-3)
    assert prepare([str(folder)], name="win", size="tiny", num_processes=1, ct_window=(-175, 250),
                   log=lambda m: None).store == soft.store
    with pytest.raises(MimError, match="low < high"):
        prepare([str(folder)], name="win", size="tiny", num_processes=1, ct_window=(250, -175), log=lambda m: None)


def test_leakage_guard_warns_or_fails(tmp_path, nnunet_dirs):
    root = write_dataset(nnunet_dirs["nnUNet_raw"], 21, num_train=2, num_test=1, shape=(16, 16, 16))
    folder = scans(tmp_path / "scans", 2)
    (folder / "copy.nii.gz").write_bytes((root / "imagesTr" / "case_001_0000.nii.gz").read_bytes())
    logs = []
    prepare([str(folder)], name="leak", size="tiny", num_processes=1, leakage_dataset="21", log=logs.append)
    assert any(m.startswith("WARNING: 1 image(s) of dataset 21") and "case_001_0000" in m for m in logs)
    with pytest.raises(MimError, match="1 image\\(s\\) of dataset 21 are in the pre-training data"):
        prepare([str(folder)], name="leak", size="tiny", num_processes=1, leakage_dataset="21",
                leakage_fail=True, log=logs.append)


def test_commands_prepare_the_data(tmp_path, clean_env):
    folder = scans(tmp_path / "scans")
    env = {**clean_env, "nnUNet_preprocessed": str(tmp_path / "pre"), "nnUNet_results": str(tmp_path / "res")}
    result = subprocess.run([command("mim_plan_and_preprocess"), "-d", str(folder), "-data_name", "cli",
                             "-size", "tiny", "-np", "1"], env=env, capture_output=True, encoding="utf-8",
                            errors="replace", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    plan = json.loads((tmp_path / "pre" / "MiM_cli" / "plan_hybrid_tiny.json").read_text(encoding="utf-8"))
    fingerprint = json.loads((tmp_path / "pre" / "MiM_cli" / "fingerprint.json").read_text(encoding="utf-8"))
    assert fingerprint["overall"]["num_cases"] == 3 and all(k in plan["explain"] for k in ("target_spacing", "lr"))
    assert "3 cases ready (0 from an earlier run)" in result.stdout
    # mim_pretrain runs the same preparation (resumed here) before its engine
    result = subprocess.run([command("mim_pretrain"), "-d", str(folder), "-data_name", "cli", "-size", "tiny",
                             "-np", "1", "-input_size", "32", "-batch", "1", "-accum", "1", "-steps", "2",
                             "-workers", "0"],
                            env=env, capture_output=True, encoding="utf-8", errors="replace", timeout=600)
    assert "3 cases ready (3 from an earlier run)" in result.stdout
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "res" / "MiM_cli" / "hybrid_tiny" / "export" / "mim_hybrid_tiny.safetensors").is_file()


def test_loader_benchmark_script_runs():
    import sys
    script = SCRIPTS / "benchmark_loader.py"
    result = subprocess.run([sys.executable, str(script), "-volumes", "2", "-shape", "40", "64", "64",
                             "-crops", "3"], capture_output=True, encoding="utf-8", errors="replace", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    row = json.loads(result.stdout.strip().splitlines()[-1])
    assert row["store_crops_per_s"] > 0 and row["nifti_crops_per_s"] > 0 and row["crops"] == 3


def test_two_folders_with_the_same_basename_do_not_share_a_result_folder(tmp_path, nnunet_dirs):
    first, second = scans(tmp_path / "site_a" / "scans", 2), scans(tmp_path / "site_b" / "scans", 2)
    assert prepare([str(first)], size="tiny", num_processes=1, log=lambda m: None).plan["name"] == "scans"
    manifest = json.loads((nnunet_dirs["nnUNet_preprocessed"] / "MiM_scans" / "manifest.json").read_text(
        encoding="utf-8"))
    assert manifest["sources"] == [str(first.resolve())]
    with pytest.raises(MimError) as info:
        prepare([str(second)], size="tiny", num_processes=1, log=lambda m: None)
    folder = nnunet_dirs["nnUNet_preprocessed"] / "MiM_scans"
    assert str(info.value) == (f"{folder} holds data prepared from {first.resolve()}, not {second.resolve()}: "
                               f"name this data with -data_name NAME (or delete {folder})")
    # the first folder's preparation is intact and still reused
    logs = []
    prepare([str(first)], size="tiny", num_processes=1, log=logs.append)
    assert any("fingerprint unchanged" in m for m in logs)
    # asked for by name: replaced, with a warning
    logs.clear()
    prepare([str(second)], name="scans", size="tiny", num_processes=1, log=logs.append)
    assert f"WARNING: {folder} holds data prepared from {first.resolve()}, not {second.resolve()}: -data_name scans " \
           f"was asked for, so its fingerprint and pre-training plan are replaced" in logs
