"""The leakage guard compares content: re-saved, re-formatted, re-oriented and slightly altered copies of a
downstream image are found; unrelated images are not."""

import numpy as np
import SimpleITK as sitk

from helpers.synthetic import write_dataset
from mim_nnunet.data.fingerprint import compute_fingerprint
from mim_nnunet.data.leakage import content_signature, find_leakage, near_duplicate
from mim_nnunet.data.manifest import build_manifest
from mim_nnunet.data.sources import resolve_sources


def test_copies_are_found_by_content_whatever_their_bytes(tmp_path, nnunet_dirs):
    root = write_dataset(nnunet_dirs["nnUNet_raw"], 14, num_train=2, num_test=2, shape=(16, 16, 16), seed=4)
    tr, ts = root / "imagesTr", root / "imagesTs"
    pre = tmp_path / "pretrain"
    pre.mkdir()
    first = sitk.ReadImage(str(tr / "case_000_0000.nii.gz"))
    sitk.WriteImage(first, str(pre / "resaved.nii"))                               # uncompressed: other bytes
    second = sitk.ReadImage(str(tr / "case_001_0000.nii.gz"))
    sitk.WriteImage(sitk.DICOMOrient(second, "LPI"), str(pre / "reoriented.mha"))  # other format, axis order
    third = sitk.ReadImage(str(ts / "case_002_0000.nii.gz"))
    values = sitk.GetArrayFromImage(third).astype(np.float32)
    noisy = sitk.GetImageFromArray(values + np.random.default_rng(0).normal(0, 1e-3 * np.ptp(values), values.shape)
                                   .astype(np.float32))
    noisy.CopyInformation(third)
    sitk.WriteImage(noisy, str(pre / "altered.nii.gz"))                           # not the same voxels
    other = sitk.GetImageFromArray(np.random.default_rng(1).normal(0, 100, values.shape).astype(np.float32))
    other.CopyInformation(third)
    sitk.WriteImage(other, str(pre / "unrelated.nii.gz"))
    # the reoriented copy's array really is another arrangement of the voxels
    assert not np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(pre / "reoriented.mha"))),
                              sitk.GetArrayFromImage(second))
    fingerprint = compute_fingerprint(build_manifest(resolve_sources([str(pre)]), num_threads=1), num_processes=1)
    names = ("resaved", "reoriented", "altered", "unrelated")
    found = {(f["file"].rsplit("/", 1)[-1], next(n for n in names if n in f["case_id"]), f["how"].split(" (")[0])
             for f in find_leakage(fingerprint, "14")}
    assert found == {("case_000_0000.nii.gz", "resaved", "identical voxels"),
                     ("case_001_0000.nii.gz", "reoriented", "identical voxels"),
                     ("case_002_0000.nii.gz", "altered", "near-duplicate")}


def test_near_duplicate_needs_the_same_grid_and_close_thumbnails():
    base = np.zeros((16, 16, 16), np.float32)
    base[4:12, 4:12, 4:12] = 100.0
    image = sitk.GetImageFromArray(base)
    a = content_signature(image)
    assert a["thumbnail"][0] == 0.0 and max(a["thumbnail"]) == 100.0     # 4^3 blocks of 4^3 voxels, by hand
    shifted = sitk.GetImageFromArray(np.roll(base, 2, axis=0))
    assert not near_duplicate(a, content_signature(shifted))             # a structure moved: another image
    respaced = sitk.GetImageFromArray(base)
    respaced.SetSpacing((1.0, 1.0, 2.0))
    assert not near_duplicate(a, content_signature(respaced))
    assert near_duplicate(a, content_signature(sitk.GetImageFromArray(base + 0.1)))
