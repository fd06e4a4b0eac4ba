"""mim_evaluate: DSC and NSD against values computed by hand on small masks, empty-mask conventions,
and clear errors for missing cases and mismatched geometry."""

import json
import subprocess

import numpy as np
import pytest
import SimpleITK as sitk

from helpers.commands import command, run_main
from mim_nnunet.evaluation import EvaluationError, class_scores, evaluate_folders


def surface(m):
    """Voxels of m with a 6-neighbour outside m (outside the volume counts as outside)."""
    padded = np.pad(m, 1)
    inner = np.ones_like(m, bool)
    for axis in range(3):
        for shift in (1, -1):
            inner &= np.roll(padded, shift, axis)[1:-1, 1:-1, 1:-1]
    return m & ~inner


def nsd_brute_force(pred, label, tol):
    sp, sl = [np.argwhere(surface(m)) for m in (pred, label)]
    dist = np.sqrt(((sp[:, None, :] - sl[None, :, :]) ** 2).sum(-1))        # every pair, 1 mm voxels
    return ((dist.min(1) <= tol).sum() + (dist.min(0) <= tol).sum()) / (len(sp) + len(sl))


def test_dsc_and_nsd_by_hand():
    label = np.zeros((6, 10, 10), np.uint8)
    label[1:5, 2:6, 2:6] = 1                                 # a 4x4x4 cube: 64 voxels
    pred = np.zeros_like(label)
    pred[1:5, 2:6, 3:7] = 1                                  # shifted by one voxel: overlap 48
    for tol in (0.5, 1.0, 2.0):
        s = class_scores(pred, label, [1], spacing=(1.0, 1.0, 1.0), tolerance_mm=tol)[1]
        assert s["dsc"] == pytest.approx(2 * 48 / 128)
        assert s["nsd"] == pytest.approx(nsd_brute_force(pred == 1, label == 1, tol))
    # the brute force's surface, by hand: a 4x4x4 cube minus its 2x2x2 core
    assert surface(label == 1).sum() == 56
    assert class_scores(pred, label, [1], (1.0, 1.0, 1.0), tolerance_mm=1.0)[1]["nsd"] == pytest.approx(1.0)


def test_empty_masks_follow_the_stated_convention():
    empty, full = np.zeros((4, 4, 4), np.uint8), np.zeros((4, 4, 4), np.uint8)
    full[1:3, 1:3, 1:3] = 2
    assert class_scores(empty, empty, [2], (1, 1, 1))[2] == {"dsc": None, "nsd": None}   # no score: left out
    assert class_scores(empty, full, [2], (1, 1, 1))[2] == {"dsc": 0.0, "nsd": 0.0}      # nothing predicted
    assert class_scores(full, empty, [2], (1, 1, 1))[2] == {"dsc": 0.0, "nsd": 0.0}      # nothing to find


def write(array, path, spacing=(1.0, 1.0, 1.0)):
    img = sitk.GetImageFromArray(array.astype(np.uint8))
    img.SetSpacing(spacing)
    sitk.WriteImage(img, str(path))


def evaluate_in_process(tmp_path, capsys) -> subprocess.CompletedProcess:
    """``mim_evaluate -pred tmp_path/pred -ref tmp_path/ref`` through the command's ``main`` in this process
    (the command itself runs as a subprocess in the first test)."""
    from mim_nnunet.cli.evaluate import main
    return run_main(main, ["-pred", tmp_path / "pred", "-ref", tmp_path / "ref"], capsys)


def test_folders_table_json_and_errors(tmp_path, capsys):
    (tmp_path / "ref").mkdir(), (tmp_path / "pred").mkdir()
    a = np.zeros((6, 6, 6), np.uint8)
    a[1:4, 1:4, 1:4] = 1
    a[4:6, 4:6, 4:6] = 2
    write(a, tmp_path / "ref" / "c1.nii.gz")
    write(a, tmp_path / "pred" / "c1.nii.gz")
    b = a.copy()
    b[b == 2] = 0
    write(a, tmp_path / "ref" / "c2.nii.gz")
    write(b, tmp_path / "pred" / "c2.nii.gz")
    result = evaluate_folders(tmp_path / "pred", tmp_path / "ref")
    assert result["mean"][1]["dsc"] == 1.0 and result["mean"][2]["dsc"] == 0.5
    assert result["overall"]["dsc"] == pytest.approx(0.75)
    cli = subprocess.run([command("mim_evaluate"), "-pred", str(tmp_path / "pred"), "-ref", str(tmp_path / "ref")],
                         capture_output=True, encoding="utf-8", errors="replace", timeout=300)
    assert cli.returncode == 0, cli.stderr
    assert "| **mean** | 75.00 | 75.00 | 2 of 2 classes |" in cli.stdout
    assert json.loads((tmp_path / "pred" / "summary_mim.json").read_text(encoding="utf-8"))["overall"]["dsc"] == 0.75
    write(a, tmp_path / "ref" / "c3.nii.gz")
    with pytest.raises(EvaluationError, match="no prediction for 1 case\\(s\\): c3.nii.gz"):
        evaluate_folders(tmp_path / "pred", tmp_path / "ref")
    write(a, tmp_path / "pred" / "c3.nii.gz", spacing=(2.0, 1.0, 1.0))
    cli = evaluate_in_process(tmp_path, capsys)
    assert cli.returncode == 2 and "c3.nii.gz: geometry differs" in cli.stderr and "spacing" in cli.stderr


def test_a_false_positive_on_an_empty_reference_is_scored(tmp_path, capsys):
    """The issue's case: case 2's reference has no lesion, its prediction has one. Per-reference classes
    skipped it (lesion 100 %); scored in every case it is (1 + 0) / 2 = 50 %."""
    (tmp_path / "ref").mkdir(), (tmp_path / "pred").mkdir()
    lesion = np.zeros((6, 6, 6), np.uint8)
    lesion[1:3, 1:3, 1:3] = 1
    write(lesion, tmp_path / "ref" / "c1.nii.gz")
    write(lesion, tmp_path / "pred" / "c1.nii.gz")
    write(np.zeros_like(lesion), tmp_path / "ref" / "c2.nii.gz")
    write(lesion, tmp_path / "pred" / "c2.nii.gz")                   # a false-positive lesion
    union = evaluate_folders(tmp_path / "pred", tmp_path / "ref")
    assert union["classes"] == [1] and union["classes_from"] == "union of the references and predictions"
    assert union["cases"]["c2"][1]["dsc"] == 0.0 and union["mean"][1]["dsc"] == 0.5
    # dataset.json next to the references lists the classes; values it does not list are warned about
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "lesion": 1, "cyst": 2}}))
    extra = lesion.copy()
    extra[4, 4, 4] = 3
    write(extra, tmp_path / "pred" / "c1.nii.gz")
    listed = evaluate_folders(tmp_path / "pred", tmp_path / "ref")
    assert listed["classes"] == [1, 2] and listed["classes_from"] == str(tmp_path / "dataset.json")
    assert listed["mean"][2]["dsc"] is None                         # absent from both everywhere: no mean
    assert listed["warnings"] == [f"prediction label value(s) [3] are not listed in {tmp_path / 'dataset.json'}"]
    cli = evaluate_in_process(tmp_path, capsys)
    assert cli.returncode == 0, cli.stderr
    assert "| lesion | 50.00 |" in cli.stdout and "| cyst | absent | absent | 0 of 2 cases |" in cli.stdout
    assert "warning: prediction label value(s) [3] are not listed" in cli.stderr


def test_a_class_absent_from_both_is_left_out_of_its_mean_and_the_table_says_so(tmp_path, capsys):
    """nnU-Net's convention: a case where the class is in neither reference nor prediction has no score and does
    not enter the class's mean (scoring it 1 would lift the mean over cases that found nothing to find)."""
    (tmp_path / "ref").mkdir(), (tmp_path / "pred").mkdir()
    ref = np.zeros((6, 6, 6), np.uint8)
    ref[0:2, 0:2, 0:2] = 1                                         # class 1: 8 voxels, found in full
    ref[3:5, 3:5, 3:5] = 2                                         # class 2: 8 voxels, half of them found
    pred = ref.copy()
    pred[3:5, 3:5, 3] = 0
    write(ref, tmp_path / "ref" / "c1.nii.gz")
    write(pred, tmp_path / "pred" / "c1.nii.gz")
    only_1 = np.where(ref == 1, 1, 0)                              # case 2: class 2 in neither
    write(only_1, tmp_path / "ref" / "c2.nii.gz")
    write(only_1, tmp_path / "pred" / "c2.nii.gz")
    dsc_2 = 2 * 4 / (8 + 4)                                        # by hand: overlap 4, sizes 8 and 4
    result = evaluate_folders(tmp_path / "pred", tmp_path / "ref")
    assert result["cases"]["c2"][2] == {"dsc": None, "nsd": None}
    assert result["mean"][2]["dsc"] == pytest.approx(dsc_2)        # the mean of case 1 alone, not (dsc_2 + 1) / 2
    assert result["counted"] == {1: 2, 2: 1} and result["absent"] == {1: [], 2: ["c2"]}
    assert result["overall"]["dsc"] == pytest.approx((1.0 + dsc_2) / 2)
    cli = evaluate_in_process(tmp_path, capsys)
    assert cli.returncode == 0, cli.stderr
    assert f"| 2 | {100 * dsc_2:.2f} |" in cli.stdout and "| 1 of 2 cases |" in cli.stdout
    assert "| 1 | 100.00 | 100.00 | 2 of 2 cases |" in cli.stdout
    assert "2: absent from reference and prediction in 1 of 2 case(s) (c2): left out of its mean" in cli.stdout
    assert "nan" not in cli.stdout
    saved = json.loads((tmp_path / "pred" / "summary_mim.json").read_text(encoding="utf-8"))
    assert saved["cases"]["c2"]["2"]["dsc"] is None and saved["counted"]["2"] == 1


def test_a_class_absent_everywhere_prints_absent_not_nan(tmp_path, capsys):
    """The QA case: references and predictions all empty."""
    (tmp_path / "ref").mkdir(), (tmp_path / "pred").mkdir()
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "lesion": 1}}))
    for case in ("c1", "c2"):
        write(np.zeros((4, 4, 4), np.uint8), tmp_path / "ref" / f"{case}.nii.gz")
        write(np.zeros((4, 4, 4), np.uint8), tmp_path / "pred" / f"{case}.nii.gz")
    cli = evaluate_in_process(tmp_path, capsys)
    assert cli.returncode == 0, cli.stderr
    assert "| lesion | absent | absent | 0 of 2 cases |" in cli.stdout
    assert "| **mean** | absent | absent | 0 of 1 classes |" in cli.stdout
    assert "nan" not in cli.stdout.lower()
    saved = json.loads((tmp_path / "pred" / "summary_mim.json").read_text(encoding="utf-8"))
    assert saved["overall"] == {"dsc": None, "nsd": None}
    # without dataset.json there is no class at all to score: said, no nan
    (tmp_path / "dataset.json").unlink()
    cli = evaluate_in_process(tmp_path, capsys)
    assert cli.returncode == 0, cli.stderr
    assert "| **mean** | absent | absent | 0 of 0 classes |" in cli.stdout and "nan" not in cli.stdout.lower()
    assert "no class to score: every reference and prediction is background only" in cli.stdout
