"""Reading real-format files and rejecting bad ones with a one-line reason naming the file."""

import numpy as np
import pytest
import SimpleITK as sitk

from helpers.volumes import DICOM_DIRECTION, DIRECTION, ORIGIN, SPACING, bad_files, ct_array, write, write_dicom_series
from mim_nnunet.data.image_io import BadImage, read_case


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
