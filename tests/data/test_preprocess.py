"""Preprocessing against independent computations: orientation, resampling, intensities; bad files
skipped and reported; interrupted runs resumed."""

import json
import os

import numpy as np
import pytest

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
from mim_nnunet.data.intensity import foreground_coordinates, foreground_rule
from mim_nnunet.data.manifest import build_manifest
from mim_nnunet.data.pipeline import prepare
from mim_nnunet.data.preprocess import preprocess
from mim_nnunet.data.sources import Case

RAS_IN_LPS = np.diag([-1.0, -1.0, 1.0])      # x toward Right, y toward Anterior, z toward Superior
RAS_IN_LPS_ZYX = RAS_IN_LPS[::-1, ::-1]      # the same, rows and columns in (z, y, x) order


def plan_for(spacing_zyx, modality="CT"):
    intensity = {"CT": {"window": [-1000.0, 1000.0]}}
    return {"orientation": "RAS", "target_spacing": list(spacing_zyx), "intensity": intensity,
            "foreground": foreground_rule()[0], "store_dtype": "float32"}


def run_one(tmp_path, path, plan, modality="CT"):
    manifest = build_manifest([Case("case", (str(path),), modality, "test")], num_threads=1)
    preprocess(manifest, plan, tmp_path / "store", num_processes=1)
    meta = json.loads((tmp_path / "store" / "case.json").read_text(encoding="utf-8"))
    return np.load(tmp_path / "store" / "case.npy"), meta


def physical_points(meta, shape_zyx):
    """World coordinates (LPS, mm; x, y, z) of every stored voxel, from the stored geometry alone, by the
    stated convention: every entry in (z, y, x) order. (N, 3)"""
    assert meta["axes"] == "zyx"
    z, y, x = np.meshgrid(*[np.arange(n) for n in shape_zyx], indexing="ij")
    idx_zyx = np.stack([z.ravel(), y.ravel(), x.ravel()])
    d = np.asarray(meta["direction"])
    world_zyx = np.asarray(meta["origin"])[:, None] + d @ (np.asarray(meta["spacing"])[:, None] * idx_zyx)
    return world_zyx[::-1].T


def to_input_index(points, direction=DIRECTION, spacing=SPACING, origin=ORIGIN):
    """Continuous (x, y, z) index of world points in a test input volume."""
    m = np.asarray(direction).reshape(3, 3) @ np.diag(spacing)
    return np.linalg.solve(m, (points - np.asarray(origin)).T).T


def test_orientation_to_ras_and_ct_window_without_resampling(tmp_path):
    array = ct_array((12, 20, 16))
    path = write(array, tmp_path / "ct.nii.gz")
    # the input's axes point A (i), L (j), S (k); in RAS order the spacing (x, y, z) is (0.9, 0.8, 2.5)
    stored, meta = run_one(tmp_path, path, plan_for([2.5, 0.8, 0.9]))
    assert np.allclose(meta["direction"], RAS_IN_LPS_ZYX)
    assert stored.shape == (1, 12, 16, 20)
    idx = np.rint(to_input_index(physical_points(meta, stored.shape[1:]))).astype(int)
    source = array[idx[:, 2], idx[:, 1], idx[:, 0]]
    expected = (np.clip(source, -1000, 1000) + 1000) / 2000
    assert np.allclose(stored[0].ravel(), expected, atol=1e-5)
    assert meta["background"] == [0.0]


def test_dicom_series_oriented_to_ras(tmp_path):
    array = ct_array((6, 16, 12), seed=3).astype(np.int16)
    folder = write_dicom_series(array, tmp_path / "series")           # axes point L, A, I
    stored, meta = run_one(tmp_path, folder, plan_for([2.0, 0.7, 0.7]))
    assert np.allclose(meta["direction"], RAS_IN_LPS_ZYX)
    idx = np.rint(to_input_index(physical_points(meta, stored.shape[1:]), DICOM_DIRECTION, (0.7, 0.7, 2.0),
                                 (-50.0, -60.0, 30.0))).astype(int)
    expected = (np.clip(array[idx[:, 2], idx[:, 1], idx[:, 0]], -1000, 1000) + 1000) / 2000
    assert np.allclose(stored[0].ravel(), expected, atol=1e-5)


def test_resampling_reproduces_a_linear_field(tmp_path):
    shape = (10, 24, 20)
    z, y, x = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    world = (np.asarray(ORIGIN)[:, None] + np.asarray(DIRECTION).reshape(3, 3)
             @ (np.asarray(SPACING)[:, None] * np.stack([x.ravel(), y.ravel(), z.ravel()])))
    field = lambda p: 4.0 * p[0] - 3.0 * p[1] + 2.0 * p[2] - 300.0      # HU, inside the window here
    path = write(field(world).reshape(shape).astype(np.float32), tmp_path / "lin.nrrd")
    stored, meta = run_one(tmp_path, path, plan_for([1.7, 0.6, 1.1]))
    assert np.allclose(meta["spacing"], [1.7, 0.6, 1.1])
    points = physical_points(meta, stored.shape[1:])
    inside = np.all((to_input_index(points) >= 0) & (to_input_index(points) <= np.array(shape[::-1]) - 1), axis=1)
    assert inside.mean() > 0.8
    expected = (field(points.T) + 1000) / 2000                          # linear interpolation is exact on it
    assert np.allclose(stored[0].ravel()[inside], expected[inside], atol=1e-4)


def test_mri_zscore_per_case(tmp_path):
    array = np.random.default_rng(2).gamma(2.0, 50.0, (8, 12, 10)).astype(np.float32)
    stored, meta = run_one(tmp_path, write(array, tmp_path / "t1.nii.gz"), plan_for([2.5, 0.8, 0.9]), "MRI")
    expected = (array - array.mean()) / array.std()
    assert np.allclose(np.sort(stored.ravel()), np.sort(expected.ravel()), atol=1e-4)   # same values, reordered
    assert meta["background"][0] == pytest.approx(-array.mean() / array.std(), rel=1e-5)


@pytest.fixture
def collection(tmp_path, nnunet_dirs):
    folder = tmp_path / "images"
    for i in range(2):
        write(ct_array((20, 40, 36), seed=i), folder / f"ct{i}.nii.gz")
    write(ct_array((20, 40, 36), seed=5), folder / "ct_nrrd.nrrd")
    write_dicom_series(ct_array((8, 32, 30), seed=6).astype(np.int16), folder / "dicom_case")
    bad = bad_files(folder / "bad")
    (folder / "bad" / "good.nii.gz").unlink()
    (folder / "bad" / "plain.nii").unlink()
    return folder, bad


def test_folder_with_every_format_and_every_bad_kind(collection, capsys):
    folder, bad = collection
    prepared = prepare([str(folder)], name="mixed", size="tiny", num_processes=2)
    report = prepared.report
    assert len(report["ok"]) == 4                                           # 2 NIfTI, 1 NRRD, 1 DICOM series
    assert any("dicom_case" in c for c in report["ok"])
    skipped = {os.path.basename(s["files"][0]): s["reason"] for s in report["skipped"]}
    assert set(skipped) == set(bad)
    for name, reason in bad.items():
        assert reason in skipped[name]
    assert json.loads((prepared.store / "report.json").read_text(encoding="utf-8"))["skipped"] == report["skipped"]
    out = capsys.readouterr().out
    assert "4 cases ready" in out and "9 skipped" in out


def test_interrupted_run_resumes_without_redoing_or_losing_cases(collection):
    folder, _ = collection
    first = prepare([str(folder)], name="resume", size="tiny", num_processes=1)
    arrays = sorted(first.store.glob("*.npy"))
    stamps = {p: p.stat().st_mtime_ns for p in arrays}
    victim = arrays[0]
    # an interruption mid-case leaves a temporary file and no metadata: the case counts as unfinished
    victim.with_suffix(".json").unlink()
    victim.rename(victim.with_name(".tmp_123_" + victim.name))
    second = prepare([str(folder)], name="resume", size="tiny", num_processes=1)
    assert second.report["ok"] == first.report["ok"] and second.report["done_before"] == len(arrays) - 1
    for p in arrays[1:]:
        assert p.stat().st_mtime_ns == stamps[p]                            # untouched
    assert victim.is_file() and victim.with_suffix(".json").is_file()


def test_foreground_is_the_body_by_hand():
    rule = dict(foreground_rule()[0], coordinates_per_case=5)
    hu = np.full((1, 4, 5, 6), -1000.0)
    hu[0, 1:3, 2:4, 1:5] = 40.0                          # 16 soft-tissue voxels
    hu[0, 0, 0, 0] = -499.0                              # just above -500 HU: body
    hu[0, 3, 4, 5] = -501.0                              # just below: air
    stored = (np.clip(hu, -1000, 1000) + 1000) / 2000
    coords, voxels = foreground_coordinates(stored, "CT", {"CT": {"window": [-1000.0, 1000.0]}}, rule,
                                            np.random.default_rng(0))
    assert voxels == 17 and coords.shape == (5, 3)
    assert all(hu[(0, *c)] > -500 for c in coords)
    mri = np.arange(100, dtype=np.float64).reshape(1, 4, 5, 5)           # the 10th percentile is 9.9
    coords, voxels = foreground_coordinates(mri, "MRI", {}, dict(rule, coordinates_per_case=1000),
                                            np.random.default_rng(0))
    assert voxels == 90 and sorted(mri[(0, *coords.T)].tolist()) == list(range(10, 100))


def test_foreground_under_a_window_above_the_body_threshold_starts_at_its_low_end():
    # window [-175, 250]: -500 HU is below its low end, where every voxel is stored as 0
    rule = foreground_rule()[0]
    hu = np.array([-1000.0, -600.0, -300.0, -175.0, -174.0, -100.0, 40.0, 400.0]).reshape(1, 1, 1, 8)
    stored = (np.clip(hu, -175, 250) + 175) / 425
    coords, voxels = foreground_coordinates(stored, "CT", {"CT": {"window": [-175.0, 250.0]}}, rule,
                                            np.random.default_rng(0))
    assert voxels == 4 and sorted(coords[:, 2].tolist()) == [4, 5, 6, 7]     # -174 HU and above
