"""Modality per case: declared per source, detected from the header or the intensities, each case
normalised by its own; a case unlike its declaration is warned about."""

import json

import numpy as np
import pytest

from helpers.volumes import ct_array, write, write_dicom_series
from mim_nnunet.data.modality import detect_modality, header_modality, resolve_modality
from mim_nnunet.data.pipeline import prepare
from mim_nnunet.data.preprocess import case_paths
from mim_nnunet.data.sources import SourceError, resolve_sources


def mri_array(shape_zyx=(16, 24, 20), seed=0):
    """MRI-like magnitudes: 0 outside, 200-3000 inside (a CT window would clip most of it)."""
    rng = np.random.default_rng(seed)
    array = np.zeros(shape_zyx, np.float32)
    array[2:-2, 3:-3, 3:-3] = rng.uniform(200, 3000, (shape_zyx[0] - 4, shape_zyx[1] - 6, shape_zyx[2] - 6))
    return array


def mixed_folder(root):
    write(ct_array((16, 24, 20), seed=1), root / "mixed" / "ct.nii.gz")
    write(mri_array(), root / "mixed" / "mri.nii.gz")
    return root / "mixed"


def stored(prepared, name):
    return np.load(case_paths(prepared.store, f"mixed__{name}.nii.gz")[0]).astype(np.float64)


def test_detection_rules():
    assert detect_modality(None, -1000.0)[0] == "CT"
    assert detect_modality(None, -120.0)[0] == "CT"           # fat only: still HU
    assert detect_modality(None, 0.0)[0] == "MRI"
    assert detect_modality(None, -2.5)[0] == "MRI"            # z-scored MRI
    assert detect_modality("MRI", -1000.0) == ("MRI", "the header says MRI")   # the header wins
    assert resolve_modality("auto", "MRI", "e") == ("MRI", None)
    assert resolve_modality("CT", "CT", "e") == ("CT", None)
    modality, warning = resolve_modality("CT", "MRI", "the header says MRI")
    assert modality == "CT" and warning == ("declared CT but looks like MRI (the header says MRI); normalised as CT "
                                            "(-modality auto would detect it)")


def test_header_modality_from_dicom_and_nrrd(tmp_path):
    hu = ct_array((4, 8, 8)).astype(np.int16)
    assert header_modality(str(write_dicom_series(hu, tmp_path / "mr", modality="MR"))) == "MRI"
    assert header_modality(str(write_dicom_series(hu, tmp_path / "ct", modality="CT"))) == "CT"
    import SimpleITK as sitk
    image = sitk.GetImageFromArray(mri_array((4, 8, 8)))
    image.SetMetaData("Modality", "MET_MOD_MR")
    sitk.WriteImage(image, str(tmp_path / "mr.nrrd"))
    assert header_modality(str(tmp_path / "mr.nrrd")) == "MRI"
    assert header_modality(str(write(mri_array((4, 8, 8)), tmp_path / "plain.nii.gz"))) is None


def test_a_mixed_folder_is_normalised_per_case(tmp_path, nnunet_dirs):
    folder = mixed_folder(tmp_path)
    logs = []
    prepared = prepare([str(folder)], name="mixed", size="tiny", num_processes=1, log=logs.append)
    fingerprint = json.loads((prepared.folder / "fingerprint.json").read_text(encoding="utf-8"))
    by_file = {e["case_id"]: e for e in fingerprint["cases"]}
    assert by_file["mixed__ct.nii.gz"]["modality"] == "CT" and by_file["mixed__mri.nii.gz"]["modality"] == "MRI"
    assert fingerprint["overall"]["modalities"] == ["CT", "MRI"]
    assert set(prepared.plan["intensity"]) == {"CT", "MRI"}
    assert "modality detected per case (-modality auto): 1 CT, 1 MRI" in logs
    assert not any(m.startswith("WARNING") for m in logs)
    ct, mri = stored(prepared, "ct"), stored(prepared, "mri")
    assert ct.min() >= 0.0 and ct.max() <= 1.0                            # the HU window
    assert mri.mean() == pytest.approx(0.0, abs=2e-3) and mri.std() == pytest.approx(1.0, abs=2e-3)   # z-score
    assert len(np.unique(np.round(mri, 2))) > 100                         # not saturated


def test_a_declaration_is_followed_and_a_case_unlike_it_warned_about(tmp_path, nnunet_dirs):
    folder = mixed_folder(tmp_path)
    logs = []
    prepared = prepare([str(folder)], name="mixed", size="tiny", num_processes=1, modality="CT", log=logs.append)
    warnings = [m for m in logs if m.startswith("WARNING")]
    assert len(warnings) == 1 and warnings[0].startswith(f"WARNING: {folder / 'mri.nii.gz'}: declared CT but looks "
                                                         f"like MRI (no intensity below -50")
    mri = stored(prepared, "mri")
    # windowed as declared: air (0 HU -> 0.5) and saturation at 1000 "HU", as much as the input holds
    assert mri.min() == 0.5 and (mri == 1.0).mean() == pytest.approx((mri_array() >= 1000).mean(), abs=0.01)


def test_modality_per_source_and_per_datalist_item(tmp_path):
    ct_dir = tmp_path / "a"
    write(ct_array(), ct_dir / "x.nii.gz")
    mr_dir = tmp_path / "b"
    write(mri_array(), mr_dir / "y.nii.gz")
    cases = resolve_sources([str(ct_dir), str(mr_dir)], modality=["CT", "MRI"])
    assert [(c.source, c.modality) for c in cases] == [("a", "CT"), ("b", "MRI")]
    assert {c.modality for c in resolve_sources([str(ct_dir), str(mr_dir)])} == {"auto"}
    with pytest.raises(SourceError, match="-modality: 3 values for 2 -d entries"):
        resolve_sources([str(ct_dir), str(mr_dir)], modality=["CT", "MRI", "CT"])
    with pytest.raises(SourceError, match="-modality PET: expected one of CT, MRI, auto"):
        resolve_sources([str(ct_dir)], modality="PET")
    datalist = tmp_path / "dl.json"
    datalist.write_text(json.dumps({"modality": "MRI", "training": [
        {"image": "b/y.nii.gz"}, {"image": "a/x.nii.gz", "modality": "CT"}]}), encoding="utf-8")
    assert [c.modality for c in resolve_sources([str(datalist)])] == ["MRI", "CT"]
