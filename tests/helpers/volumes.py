"""Test volumes in real formats, written with SimpleITK (NIfTI, NRRD, DICOM series), and a battery of bad files."""

import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

# a permuted, flipped direction (rows = axis directions in LPS), anisotropic spacing
DIRECTION = (0.0, 1.0, 0.0,
             -1.0, 0.0, 0.0,
             0.0, 0.0, 1.0)
SPACING = (0.8, 0.9, 2.5)
ORIGIN = (12.5, -40.0, 100.0)


def ct_array(shape_zyx=(12, 20, 16), seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(-1500, 1500, shape_zyx).astype(np.float32)


def make_image(array, spacing=SPACING, origin=ORIGIN, direction=DIRECTION):
    img = sitk.GetImageFromArray(array)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    img.SetDirection(direction)
    return img


def write(array, path, **geometry):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(make_image(array, **geometry), str(path))
    return path


DICOM_DIRECTION = (1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, -1.0)   # rows flipped, slices feet-first


def write_dicom_series(array_int16, folder, spacing=(0.7, 0.7, 2.0), origin=(-50.0, -60.0, 30.0),
                       direction=DICOM_DIRECTION, modality="CT"):
    """An axial DICOM series, one file per slice, geometry in the position/orientation tags; ``modality``:
    the Modality tag's value."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    img = sitk.GetImageFromArray(array_int16.astype(np.int16))
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    img.SetDirection(direction)
    d = np.asarray(direction).reshape(3, 3)
    orientation = "\\".join(f"{v:g}" for v in (*d[:, 0], *d[:, 1]))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    uid = "1.2.826.0.1.3680043.2.1125." + str(int(time.time() * 1000))
    for k in range(img.GetDepth()):
        sl = img[:, :, k]
        for tag, value in (("0008|0060", modality), ("0020|000d", uid + ".1"), ("0020|000e", uid + ".2"),
                           ("0020|0013", str(k + 1)), ("0028|0030", f"{spacing[1]}\\{spacing[0]}"),
                           ("0018|0050", str(spacing[2])), ("0020|0037", orientation),
                           ("0020|0032", "\\".join(str(v) for v in img.TransformIndexToPhysicalPoint((0, 0, k)))),
                           ("0028|1052", "0"), ("0028|1053", "1")):
            sl.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"slice_{k:03d}.dcm"))
        writer.Execute(sl)
    return folder


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
    import nibabel as nib  # writes what SimpleITK will not: 4D series, empty axes
    return nib.Nifti1Image(array, np.eye(4)).to_bytes()
