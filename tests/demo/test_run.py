"""The README's first command, minus the install: `mim_nnunet demo` at its quickest setting on real CT,
and the demo data: archive checked, labels on their organs, held-out halves."""

import json
import math
import os
import subprocess

import numpy as np
import pytest
import SimpleITK as sitk

from helpers.commands import command, run_main
from mim_nnunet.data.preprocess import STORE_ORIENTATION
from mim_nnunet.demo.data import demo_spec, read_volume
from mim_nnunet.demo.run import SETTING_FILE

KINDS = ("MiM", "scratch")


def test_demo_data_labels_sit_on_their_organs(demo_data):
    """``demo_data``: the session's prepared demo data (tests/conftest.py)."""
    spec = demo_spec()
    dataset = demo_data["dataset"]
    meta = json.loads((dataset / "dataset.json").read_text(encoding="utf-8"))
    assert meta["labels"] == {"background": 0, "spleen": 1, "liver": 2, "stomach": 3, "aorta": 4}
    assert sorted(p.name for p in demo_data["collection"].glob("*.nii.gz")) == sorted(
        f"{p['name']}.nii.gz" for p in spec["pretrain"])
    for split in ("Tr", "Ts"):
        for case in ("abdomen", "contrast"):
            image = sitk.ReadImage(str(dataset / f"images{split}" / f"{case}_0000.nii.gz"))
            label = sitk.ReadImage(str(dataset / f"labels{split}" / f"{case}.nii.gz"))
            assert image.GetSize() == label.GetSize() and np.allclose(image.GetOrigin(), label.GetOrigin())
            ct, lab = sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(label)
            assert set(np.unique(lab)) == {0, 1, 2, 3, 4}, (split, case)            # every organ in every half
            liver = ct[lab == 2].mean()
            assert 0 < liver < 250, (split, case, liver)                           # soft tissue, not air or fat
            # written as the store orients (RAS: x grows toward the patient's right), whatever the source's
            # orientation (the contrast CT's is LPS): the liver (right) lies at larger x than the spleen (left)
            orientation = sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(image.GetDirection())
            assert orientation == STORE_ORIENTATION == "RAS", (split, case, orientation)
            assert np.nonzero(lab == 2)[2].mean() > np.nonzero(lab == 1)[2].mean() + 10, (split, case)
    # the contrast CT's label is stored flipped along y relative to the DICOM order: without the
    # resampling through world coordinates the liver label would land on other tissue
    ct = sitk.GetArrayFromImage(sitk.ReadImage(str(dataset / "imagesTr" / "contrast_0000.nii.gz")))
    lab = sitk.GetArrayFromImage(sitk.ReadImage(str(dataset / "labelsTr" / "contrast.nii.gz")))
    assert abs(ct[lab == 2].mean() - ct[lab[:, ::-1, :] == 2].mean()) > 50
    # each case is its source CT cut in two along the slice axis, the inferior half for training
    for item in spec["labelled"]:
        source = sitk.GetArrayFromImage(sitk.DICOMOrient(read_volume(demo_data["reference"], item), "RAS"))
        files = [dataset / f"images{split}" / f"{item['name']}_0000.nii.gz" for split in ("Tr", "Ts")]
        halves = [sitk.GetArrayFromImage(sitk.ReadImage(str(f))) for f in files]
        assert len(halves[0]) == len(source) // 2 and np.array_equal(np.concatenate(halves), source.astype(np.int16))


def test_a_workspace_keeps_the_setting_it_was_started_with(tmp_path, capsys):
    """The demo skips finished steps: another setting in the same workspace would reuse, say, the quick
    setting's 4-step export. It is refused in one line before anything runs."""
    from mim_nnunet.cli.main import main
    from mim_nnunet.demo.run import claim_workspace
    ws = tmp_path / "ws"
    claim_workspace(ws, "quick")
    assert json.loads((ws / SETTING_FILE).read_text(encoding="utf-8")) == {"setting": "quick"}
    claim_workspace(ws, "quick")                             # the same setting again: a rerun resumes
    result = run_main(main, ["demo", "-workspace", ws, "-device", "cpu", "-setting", "full"], capsys)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip() == (f"mim_nnunet: error: {ws}: holds the demo's 'quick' setting, whose finished "
                                     f"steps would be reused; use another -workspace for 'full', or delete {ws}")
    assert sorted(p.name for p in ws.iterdir()) == [SETTING_FILE]      # nothing else was started
    (ws / SETTING_FILE).write_text("{not json", encoding="utf-8")
    result = run_main(main, ["demo", "-workspace", ws, "-device", "cpu", "-setting", "quick"], capsys)
    assert result.returncode == 2 and f"{ws / SETTING_FILE}: unreadable" in result.stderr


@pytest.mark.slow
def test_quick_demo_writes_the_report(tmp_path, clean_env):
    env = {**clean_env, "nnUNet_n_proc_DA": "2"}
    result = subprocess.run([command("mim_nnunet"), "demo", "-workspace", str(tmp_path / "ws"), "-device", "cpu",
                             "-setting", "quick"], env=env, capture_output=True, encoding="utf-8", errors="replace",
                            timeout=1800)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    report = tmp_path / "ws" / "report"
    for name in ("summary.md", "progress_pretrain.png", "reconstructions.png", "progress_finetune_MiM.png",
                 "progress_finetune_scratch.png", "overlay_abdomen.png", "overlay_contrast.png"):
        assert (report / name).stat().st_size > 0, name
    summary = (report / "summary.md").read_text(encoding="utf-8")
    for kind in KINDS:          # the quick setting: both labelled halves, seed 0
        scores = json.loads((report / f"scores_all_seed0_{kind}.json").read_text(encoding="utf-8"))
        assert set(scores["cases"]) == {"abdomen", "contrast"}
        # every case scored on the four classes dataset.json lists, present in the half or not
        assert scores["classes"] == [1, 2, 3, 4] and scores["classes_from"].endswith("dataset.json")
        assert all(sorted(c) == ["1", "2", "3", "4"] or sorted(c) == [1, 2, 3, 4] for c in scores["cases"].values())
        values = [v[m] for v in scores["mean"].values() for m in ("dsc", "nsd")] + list(scores["overall"].values())
        assert all(math.isfinite(v) and 0 <= v <= 1 for v in values)
        assert f"{100 * scores['overall']['dsc']:.1f}" in summary
    # the pre-training validation loss at the first and last validation (steps 0 and 4 at this setting)
    assert "| first | 0 |" in summary and "| last | 4 |" in summary
    assert "| **mean** |" in summary and "Demo finished" in result.stdout
    # the host named before the run (with the estimate for it) and in the report
    before = result.stdout.split("== data:", 1)[0]
    assert "host: " in before and "estimate for this host: about" in before
    host = json.loads((report / "host.json").read_text(encoding="utf-8"))
    assert host["threads"] >= 1 and host["matmul_gflops"] > 0 and host["cpu_capability"]
    assert "- host: " in summary and "- estimated before the run: " in summary
    # on a CPU with two cores or more, MiM and scratch train together, one thread each on two cores, their
    # output passed on with a prefix
    cores = len(os.sched_getaffinity(0))
    if cores >= 2:
        threads = str(cores // 2)
        assert "fine-tunings: 2 at a time" in result.stdout and "[1] " in result.stdout and "[2] " in result.stdout
        logs = list((tmp_path / "ws" / "finetune").rglob("training_log_*.txt"))
        assert len(logs) == 2 and all(f"MIM_CPU_THREADS={threads}: torch uses {threads} CPU thread(s)"
                                      in p.read_text(encoding="utf-8") for p in logs)
