"""Converters on synthetic copies of each dataset's distributed layout: what they write (checked against the
source files), one-line errors for bad layouts, wrong labels and geometry, and (slow) nnU-Net's own
integrity check on the result."""

import gzip
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from helpers.commands import command
from helpers.downstream_layouts import (
    VALUES,
    WRITERS,
    write_btcv,
    write_image,
    write_mmwhs,
)
from mim_nnunet.common.errors import MimError
from mim_nnunet.downstream.converters import DATASETS, ConversionError, convert

QUIET = {"log": lambda *_: None}
CASE_IDS = {   # nnU-Net case ids of the synthetic copies (downstream_layouts defaults)
    "btcv": ["BTCV_0001", "BTCV_0002", "BTCV_0035", "BTCV_0036"],
    "mmwhs_ct": ["MMWHS_1001", "MMWHS_1002", "MMWHS_1005"],
    "flare22": ["FLARE22_Tr_0001", "FLARE22_Tr_0002", "FLARE22_Tr_0003"],
    "covid19_20": ["volume-covid19-A-0003", "volume-covid19-A-0011", "volume-covid19-A-0013"],
}
SOURCES = {   # (image, label) of the first synthetic case, relative to the folder the writer returns
    "btcv": ("Training/img/img0001.nii.gz", "Training/label/label0001.nii.gz"),
    "mmwhs_ct": ("ct_train/ct_train_1001_image.nii.gz", "ct_train/ct_train_1001_label.nii.gz"),
    "flare22": ("images/FLARE22_Tr_0001_0000.nii.gz", "labels/FLARE22_Tr_0001.nii.gz"),
    "covid19_20": ("Train/volume-covid19-A-0003_ct.nii.gz", "Train/volume-covid19-A-0003_seg.nii.gz"),
}


def array(path):
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


@pytest.mark.parametrize("key", sorted(WRITERS))
def test_converter_writes_images_unchanged_and_labels_as_consecutive_classes(key, nnunet_dirs, tmp_path):
    src = WRITERS[key](tmp_path / "src")
    root = convert(key, src, allow_partial=True, **QUIET)
    spec = DATASETS[key]
    assert root.name == f"Dataset{spec.dataset_id:03d}_{spec.dataset_name}"
    meta = json.loads((root / "dataset.json").read_text(encoding="utf-8"))
    assert meta["labels"] == {"background": 0, **{n: i for i, n in enumerate(spec.classes, start=1)}}
    assert meta["numTraining"] == len(CASE_IDS[key]) and meta["channel_names"] == {"0": "CT"}
    assert meta["mim_nnunet"]["converter"] == key and meta["mim_nnunet"]["partial"] is True
    assert sorted(p.name for p in (root / "labelsTr").iterdir()) == [f"{c}.nii.gz" for c in CASE_IDS[key]]
    image_src, label_src = (src / p for p in SOURCES[key])
    case = CASE_IDS[key][0]
    assert (root / "imagesTr" / f"{case}_0000.nii.gz").read_bytes() == image_src.read_bytes()
    source_label, written = array(label_src), array(root / "labelsTr" / f"{case}.nii.gz")
    for new, value in enumerate(VALUES[key], start=1):          # the published value -> its class id
        assert np.array_equal(written == new, source_label == value), (key, value)
    assert np.array_equal(written == 0, source_label == 0)
    label_img, image_img = (sitk.ReadImage(str(root / d / n)) for d, n in
                            (("labelsTr", f"{case}.nii.gz"), ("imagesTr", f"{case}_0000.nii.gz")))
    assert label_img.GetSpacing() == image_img.GetSpacing() and label_img.GetOrigin() == image_img.GetOrigin()


def test_btcv_split_and_test_images(nnunet_dirs, tmp_path):
    root = convert("btcv", write_btcv(tmp_path / "src"), allow_partial=True, **QUIET)
    split = json.loads((root / "splits_final.json").read_text(encoding="utf-8"))
    assert split == [{"train": ["BTCV_0001", "BTCV_0002"], "val": ["BTCV_0035", "BTCV_0036"]}]
    assert [p.name for p in (root / "imagesTs").iterdir()] == ["BTCV_0061_0000.nii.gz"]
    other = convert("btcv", write_btcv(tmp_path / "src2"), dataset_id=511, allow_partial=True, split="nnunet",
                    **QUIET)
    assert not (other / "splits_final.json").exists()


def test_partial_mmwhs_without_a_complete_literature_split_converts_with_a_note(nnunet_dirs, tmp_path):
    notes = []
    root = convert("mmwhs_ct", write_mmwhs(tmp_path / "src"), allow_partial=True, log=notes.append)
    assert not (root / "splits_final.json").exists()
    assert any("no split of the literature for this partial set" in n for n in notes)


def one_line(exc_info):
    message = str(exc_info.value)
    assert "\n" not in message
    return message


def test_count_and_layout_errors_name_the_place(nnunet_dirs, tmp_path):
    src = write_btcv(tmp_path / "src")
    with pytest.raises(ConversionError) as exc:
        convert("btcv", src, **QUIET)
    assert one_line(exc) == (f"{src}: 4 of the 30 btcv training cases; missing case(s) BTCV_0003, BTCV_0004, "
                             f"BTCV_0005, BTCV_0006, BTCV_0007 ... (--allow_partial converts what is there)")
    with pytest.raises(ConversionError) as exc:
        convert("btcv", tmp_path / "nowhere", **QUIET)
    assert one_line(exc).startswith(f"{tmp_path / 'nowhere'}: no such folder; expected the Synapse RawData layout")
    with pytest.raises(ConversionError) as exc:
        convert("btcv", tmp_path, **QUIET)                          # not the RawData folder
    assert one_line(exc).startswith(f"{tmp_path / 'Training' / 'img'}: no such folder")
    stray = src / "Training" / "img" / "image7.nii.gz"
    stray.write_bytes(b"")
    with pytest.raises(ConversionError) as exc:
        convert("btcv", src, allow_partial=True, **QUIET)
    assert one_line(exc).startswith(f"{stray}: unexpected file name; expected the Synapse RawData layout")
    stray.unlink()
    (src / "Training" / "img" / "img0011.nii.gz").write_bytes((src / "Training" / "img" / "img0001.nii.gz").read_bytes())
    with pytest.raises(ConversionError) as exc:
        convert("btcv", src, allow_partial=True, **QUIET)
    assert one_line(exc) == f"{src / 'Training' / 'label' / 'label0011.nii.gz'}: missing (the label of img0011.nii.gz)"
    (src / "Training" / "label" / "label0011.nii.gz").write_bytes(b"")
    with pytest.raises(ConversionError) as exc:
        convert("btcv", src, allow_partial=True, **QUIET)
    assert one_line(exc) == f"{src / 'Training' / 'img' / 'img0011.nii.gz'}: not one of the 30 published btcv training cases"
    with pytest.raises(ConversionError, match="unknown dataset 'msd'"):
        convert("msd", src, **QUIET)


def test_wrong_label_values_geometry_and_corrupt_files_name_the_file(nnunet_dirs, tmp_path):
    src = write_mmwhs(tmp_path / "src")
    label = src / "ct_train" / "ct_train_1002_label.nii.gz"
    values = array(label)
    values[0, 0, :3] = (1, 2, 421)                      # not MM-WHS values
    write_image(values, label)
    with pytest.raises(ConversionError) as exc:
        convert("mmwhs_ct", src, allow_partial=True, **QUIET)
    assert one_line(exc) == f"{label}: label values 1, 2, 421 are not mmwhs_ct classes (0, 205, 420, 500, 550, 600, 820, 850)"

    src = write_btcv(tmp_path / "btcv")
    label = src / "Training" / "label" / "label0002.nii.gz"
    write_image(array(label), label, spacing=(0.8, 0.8, 3.0))        # slice thickness differs from its image
    with pytest.raises(ConversionError) as exc:
        convert("btcv", src, allow_partial=True, **QUIET)
    assert one_line(exc) == f"{label}: geometry differs from its image img0002.nii.gz (spacing (0.8, 0.8, 3.0) vs (0.8, 0.8, 2.5))"

    src = write_btcv(tmp_path / "btcv2")
    image = src / "Training" / "img" / "img0036.nii.gz"
    raw = gzip.decompress(image.read_bytes())
    image.write_bytes(gzip.compress(raw[: len(raw) // 2]))          # truncated volume
    with pytest.raises(MimError) as exc:
        convert("btcv", src, dataset_id=512, allow_partial=True, **QUIET)
    assert one_line(exc).startswith(f"{image}: truncated")


def test_existing_conversion_and_taken_ids_are_not_overwritten(nnunet_dirs, tmp_path):
    src = write_btcv(tmp_path / "src")
    root = convert("btcv", src, allow_partial=True, **QUIET)
    stamp = (root / "dataset.json").stat().st_mtime_ns
    with pytest.raises(ConversionError, match="already converted"):
        convert("btcv", src, allow_partial=True, **QUIET)
    assert (root / "dataset.json").stat().st_mtime_ns == stamp
    convert("btcv", src, allow_partial=True, overwrite=True, **QUIET)
    (nnunet_dirs["nnUNet_raw"] / "Dataset502_Other").mkdir()
    with pytest.raises(ConversionError, match="dataset id 502 is taken"):
        convert("mmwhs_ct", write_mmwhs(tmp_path / "mm"), allow_partial=True, **QUIET)


def test_convert_command_prints_one_line_errors(nnunet_dirs, tmp_path):
    src = write_btcv(tmp_path / "src")
    env = dict(os.environ)
    result = subprocess.run([command("mim_nnunet"), "convert", "btcv", str(src)], capture_output=True,
                            encoding="utf-8", env=env, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"mim_nnunet: error: {src}: 4 of the 30 btcv training cases; missing case(s) BTCV_0003, BTCV_0004, BTCV_0005, "
        f"BTCV_0006, BTCV_0007 ... (--allow_partial converts what is there)"]


@pytest.mark.slow
def test_converted_datasets_pass_nnunets_integrity_check(tmp_path, monkeypatch, clean_env):
    """Each converter's output through nnU-Net's own check (``verify_dataset_integrity``, what
    ``--verify_dataset_integrity`` runs), in one process for the four datasets: it reads every image and label
    (files named in dataset.json, geometry, labels against dataset.json) and raises on an error. Planning and
    preprocessing a converted dataset is the end-to-end test of scripts/reproduce_paper.py; the split a converter
    writes is checked above."""
    env = dict(clean_env)
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        env[name] = str(tmp_path / name)
        monkeypatch.setenv(name, env[name])
    folders = []
    for key in sorted(WRITERS):
        convert(key, WRITERS[key](tmp_path / "src" / key), allow_partial=True, **QUIET)
        spec = DATASETS[key]
        folders.append(str(tmp_path / "nnUNet_raw" / f"Dataset{spec.dataset_id:03d}_{spec.dataset_name}"))
    script = ("import sys\n"
              "from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity\n"
              "for folder in sys.argv[1:]:\n"
              "    verify_dataset_integrity(folder, 1)\n"
              "    print('verified', folder, flush=True)\n")
    checked = subprocess.run([sys.executable, "-c", script, *folders], env=env, cwd=tmp_path, capture_output=True,
                             encoding="utf-8", errors="replace", timeout=900)
    assert checked.returncode == 0, checked.stdout[-3000:] + checked.stderr[-3000:]
    assert [line.split(" ", 1)[1] for line in checked.stdout.splitlines() if line.startswith("verified ")] == folders
    # nnU-Net prints, and does not raise on, origin/direction/affine mismatches and label-0-only files
    assert "mismatch" not in checked.stdout and "only has label 0" not in checked.stdout, checked.stdout[-3000:]
