"""The leakage guard compares content: re-saved, re-formatted, re-oriented, slightly altered and cropped copies of a
downstream image, and copies with slices removed, are found; unrelated images are not."""

import itertools
import json

import numpy as np
import pytest
import SimpleITK as sitk

from helpers.synthetic import write_dataset
from mim_nnunet.data.fingerprint import compute_fingerprint
from mim_nnunet.data.image_io import read_image
from mim_nnunet.data.leakage import SKETCH, content_signature, find_leakage, near_duplicate, runs_shared, runs_sketch
from mim_nnunet.data.manifest import build_manifest
from mim_nnunet.data.sources import resolve_sources
from mim_nnunet.demo.data import cache_dir, demo_spec, extract_reference_files


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


# ---------------------------------------------------------------------------------------------------------------
# Crops and copies with slices removed, among the demo's real CTs (cached by scripts/setup_env.sh)

@pytest.fixture(scope="module")
def real_scans():
    """The demo's real CTs (and its MRI), oriented RAS: three CTs of different patients and scanners."""
    spec = demo_spec()
    archive = cache_dir() / f"{spec['package']}-{spec['version']}.tar.gz"
    if not archive.is_file():
        pytest.fail(f"{archive} is missing: run scripts/setup_env.sh (mim_nnunet demo-data); tests never download")
    reference = extract_reference_files(spec, archive, cache_dir())
    files = {"abdomen": "example_ct.nii.gz", "contrast": "example_ct_dicom", "cta": "aorta_report/example_ct.nii.gz",
             "mri": "example_mr_sm.nii.gz"}
    return {name: sitk.DICOMOrient(read_image(str(reference / f)), "RAS") for name, f in files.items()}


def _array(image):
    return sitk.GetArrayFromImage(image).astype(np.float32)


def _image(array, like):
    out = sitk.GetImageFromArray(array)
    out.SetSpacing(like.GetSpacing()), out.SetDirection(like.GetDirection()), out.SetOrigin(like.GetOrigin())
    return out


def test_unrelated_real_scans_and_distant_slabs_share_no_runs(real_scans):
    """The false-positive rate on real data: every pair of different scans, and of a scan's top and bottom thirds
    (distant slabs: no voxel in common), shares no run of voxels; a copy cropped on all three axes and one with a
    slice removed share all of theirs."""
    sketches = {}
    for name, image in real_scans.items():
        a = _array(image)
        sketches[name] = runs_sketch(a)
        z = a.shape[0]
        sketches[f"{name}/top"], sketches[f"{name}/bottom"] = runs_sketch(a[:z // 3]), runs_sketch(a[2 * z // 3:])
        assert len(sketches[name]) == SKETCH
    unrelated = [(x, y) for x, y in itertools.combinations(sketches, 2)
                 if x.split("/")[0] != y.split("/")[0] or {x, y} == {f"{x.split('/')[0]}/top", f"{x.split('/')[0]}/bottom"}]
    shares = {pair: runs_shared(sketches[pair[0]], sketches[pair[1]]) for pair in unrelated}
    assert len(unrelated) == 58 and all(s is not None for s in shares.values())
    assert max(shares.values()) == 0.0                     # 0 of 58 unrelated pairs: no run in common at all
    for name in ("abdomen", "contrast", "cta"):
        a = _array(real_scans[name])
        z, y, x = a.shape
        crop = a[z // 5: 4 * z // 5, y // 6: 5 * y // 6, x // 5: 4 * x // 5]
        assert runs_shared(sketches[name], runs_sketch(crop)) > 0.95
        assert runs_shared(sketches[name], runs_sketch(np.delete(a, z // 2, axis=0))) > 0.95
        assert runs_shared(sketches[name], sketches[f"{name}/top"]) > 0.95        # a slab is a crop too


def test_a_crop_and_a_copy_with_a_slice_removed_are_found_unrelated_scans_are_not(real_scans, tmp_path, nnunet_dirs):
    """Through the fingerprint and find_leakage, as mim_nnunet check-leakage runs them: the pre-training data
    holds a crop of one downstream CT, another downstream CT with its middle slice removed, and unrelated scans
    (another CT, the top slab of a downstream CT whose bottom slab is the downstream image, the MRI)."""
    pre, root = tmp_path / "pretrain", nnunet_dirs["nnUNet_raw"] / "Dataset015_Leak"
    pre.mkdir()
    (root / "imagesTr").mkdir(parents=True)
    abdomen, cta, contrast = (real_scans[n] for n in ("abdomen", "cta", "contrast"))
    z, y, x = abdomen.GetSize()[::-1]
    sitk.WriteImage(abdomen[x // 5: 4 * x // 5, y // 6: 5 * y // 6, z // 5: 4 * z // 5], str(pre / "crop.nii.gz"))
    sitk.WriteImage(_image(np.delete(_array(cta), cta.GetSize()[2] // 2, axis=0), cta), str(pre / "gap.nii.gz"))
    depth = contrast.GetSize()[2]
    sitk.WriteImage(contrast[:, :, : depth // 3], str(pre / "contrast_top.nii.gz"))
    sitk.WriteImage(real_scans["mri"], str(pre / "mri.nii.gz"))
    for i, image in enumerate((abdomen, cta, contrast[:, :, 2 * depth // 3:])):
        sitk.WriteImage(image, str(root / "imagesTr" / f"case_{i:03d}_0000.nii.gz"))
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "labels": {"background": 0},
                                                   "numTraining": 3, "file_ending": ".nii.gz"}), encoding="utf-8")
    fingerprint = compute_fingerprint(build_manifest(resolve_sources([str(pre)]), num_threads=1), num_processes=1)
    names = ("crop", "gap", "contrast_top", "mri")
    found = {(f["file"].rsplit("/", 1)[-1], next(n for n in names if n in f["case_id"]), f["how"].split(" (")[0])
             for f in find_leakage(fingerprint, "15")}
    assert found == {("case_000_0000.nii.gz", "crop", "near-duplicate"),
                     ("case_001_0000.nii.gz", "gap", "near-duplicate")}
