"""Reading real-format files and rejecting bad ones with a one-line reason naming the file."""

import numpy as np
import pytest
import SimpleITK as sitk

from mim_nnunet.data.image_io import BadImage, read_case
from volumes import DICOM_DIRECTION, DIRECTION, ORIGIN, SPACING, ct_array, write, write_dicom_series


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_formats_keep_voxels_and_geometry(tmp_path, suffix):
    array = ct_array()
    img = read_case([str(write(array, tmp_path / f"ct{suffix}"))])
    assert np.array_equal(sitk.GetArrayFromImage(img), array)
    assert np.allclose(img.GetSpacing(), SPACING) and np.allclose(img.GetOrigin(), ORIGIN)
    assert np.allclose(img.GetDirection(), DIRECTION)


def test_dicom_series_folder(tmp_path):
    array = ct_array((6, 16, 12)).astype(np.int16)
    img = read_case([str(write_dicom_series(array, tmp_path / "series"))])
    assert np.array_equal(sitk.GetArrayFromImage(img), array)
    assert np.allclose(img.GetSpacing(), (0.7, 0.7, 2.0), atol=1e-3)
    assert np.allclose(img.GetDirection(), DICOM_DIRECTION, atol=1e-5)
    assert np.allclose(img.GetOrigin(), (-50.0, -60.0, 30.0), atol=1e-3)


def bad_files(tmp_path):
    good = write(ct_array(), tmp_path / "good.nii.gz")
    plain = write(ct_array(), tmp_path / "plain.nii")
    cases = {
        "garbage.nii.gz": (lambda p: p.write_bytes(b"not an image at all"), "truncated or corrupt"),
        "truncated.nii.gz": (lambda p: p.write_bytes(good.read_bytes()[:2000]), "truncated or corrupt"),
        "truncated.nii": (lambda p: p.write_bytes(plain.read_bytes()[:3000]), "truncated: 3000 of"),
        "flat.nii.gz": (lambda p: sitk.WriteImage(sitk.GetImageFromArray(np.zeros((20, 20), np.float32)), str(p)),
                        "2D image"),
        "slice.nii.gz": (lambda p: write(np.zeros((1, 20, 20), np.float32), p), "a single slice"),
        "time.nii": (lambda p: p.write_bytes(_nifti(np.zeros((5, 6, 4, 3), np.float32))), "4D image"),
        "nan.nrrd": (lambda p: write(np.where(ct_array() > 1400, np.nan, ct_array()).astype(np.float32), p),
                     "NaN or infinite"),
        "inf.mha": (lambda p: write(np.where(ct_array() > 1400, np.inf, ct_array()).astype(np.float32), p),
                    "NaN or infinite"),
        "empty.nii": (lambda p: p.write_bytes(_nifti(np.zeros((4, 0, 5), np.float32))), "zero-size axis"),
    }
    for name, (make, _) in cases.items():
        make(tmp_path / name)
    return {name: reason for name, (_, reason) in cases.items()}


def _nifti(array):
    import nibabel as nib   # writes what SimpleITK will not: 4D series, empty axes
    return nib.Nifti1Image(array, np.eye(4)).to_bytes()


def test_every_bad_kind_is_a_one_line_reason_naming_the_file(tmp_path):
    for name, reason in bad_files(tmp_path).items():
        with pytest.raises(BadImage) as info:
            read_case([str(tmp_path / name)])
        message = str(info.value)
        assert message.startswith(str(tmp_path / name) + ": ") and reason in message, message
        assert "\n" not in message


def test_channels_with_different_geometry_are_refused(tmp_path):
    a = write(ct_array(), tmp_path / "a_0000.nii.gz")
    b = write(ct_array(), tmp_path / "a_0001.nii.gz", spacing=(1.0, 1.0, 1.0))
    with pytest.raises(BadImage, match="a_0001.nii.gz: geometry differs"):
        read_case([str(a), str(b)])
    two = read_case([str(a), str(write(ct_array(seed=1), tmp_path / "c_0001.nii.gz"))])
    assert two.GetNumberOfComponentsPerPixel() == 2
