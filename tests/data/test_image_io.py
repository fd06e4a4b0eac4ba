"""Reading real-format files and rejecting bad ones with a one-line reason naming the file."""

import numpy as np
import pytest
import SimpleITK as sitk

from helpers.volumes import (
    DICOM_DIRECTION,
    DIRECTION,
    ORIGIN,
    SPACING,
    bad_files,
    ct_array,
    write,
    write_dicom_series,
)
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


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nan_and_inf_in_float_nifti_are_refused(tmp_path, suffix, dtype):
    """SimpleITK reads NaN/inf of a NIfTI file as 0 (the finite check never saw them); counted from the bytes.
    > 1 MiB of voxels, so the values sit in several read blocks; float64 elements straddle a block edge."""
    array = np.zeros((40, 60, 120), dtype)
    flat = array.reshape(-1)
    # the voxel holding byte 540 + 2^20 of a NIfTI-1 file (header 352 bytes): the first block edge
    straddling = (540 + (1 << 20) - 352) // array.itemsize
    flat[[0, 5, straddling, flat.size - 1]] = [np.nan, np.inf, np.nan, -np.inf]
    path = write(array, tmp_path / f"f{suffix}")
    assert np.isfinite(sitk.GetArrayFromImage(sitk.ReadImage(str(path)))).all()     # what ITK shows
    with pytest.raises(BadImage, match=r"f\.nii(\.gz)?: 4 NaN or infinite voxel\(s\) \(float data"):
        read_case([str(path)])
    flat[:] = 1.5
    assert np.array_equal(sitk.GetArrayFromImage(read_case([str(write(array, tmp_path / f"g{suffix}"))])), array)


def test_a_dicom_series_with_a_missing_slice_is_refused(tmp_path):
    """32 slices 5 mm apart, one removed: ITK would stack 31 at 5.16 mm. Positions by hand: the gap is 10 mm."""
    array = ct_array((32, 12, 10)).astype(np.int16)
    folder = write_dicom_series(array, tmp_path / "series", spacing=(0.8, 0.8, 5.0))
    img = read_case([str(folder)])                                   # complete: read, 5 mm
    assert img.GetSize() == (10, 12, 32) and abs(img.GetSpacing()[2] - 5.0) < 1e-3
    (folder / "slice_017.dcm").unlink()
    reader = sitk.ImageSeriesReader()                                # what ITK alone makes of it
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)))
    assert abs(reader.Execute().GetSpacing()[2] - 155 / 30) < 1e-3
    with pytest.raises(BadImage) as info:
        read_case([str(folder)])
    assert str(info.value) == (f"{folder}: uneven slice positions: 10 mm between slices 16 and 17 where the series "
                               f"steps 5 mm (1 such gap(s): a missing or duplicated slice)")
