"""The demo report's pictures: slices shown in one orientation whatever the file's direction cosines."""

import numpy as np
import SimpleITK as sitk

from mim_nnunet.demo.report import display_array


def _write(path, array, direction):
    image = sitk.GetImageFromArray(array)
    image.SetDirection(direction)
    image.SetSpacing((2.0, 3.0, 4.0))
    sitk.WriteImage(image, str(path))
    return path


def test_ras_file_is_shown_like_an_lps_one(tmp_path):
    # (z, y, x) = (2, 3, 4); one marked voxel at array index (1, 0, 0)
    array = np.zeros((2, 3, 4), dtype=np.int16)
    array[1, 0, 0] = 7
    # RAS: array x runs to the patient's right, y to anterior; index (y 0, x 0) is posterior-left,
    # which in LPS (x to the left, y to posterior) is the last row and the last column
    ras = display_array(_write(tmp_path / "ras.nii.gz", array, (-1, 0, 0, 0, -1, 0, 0, 0, 1)))
    assert ras.shape == (2, 3, 4)
    assert list(zip(*np.nonzero(ras))) == [(1, 2, 3)]
    # an LPS file is shown as stored
    lps = display_array(_write(tmp_path / "lps.nii.gz", array, (1, 0, 0, 0, 1, 0, 0, 0, 1)))
    np.testing.assert_array_equal(lps, array)


def test_seed_spread_leaves_out_seeds_where_a_class_was_absent():
    """A class absent from every reference and prediction of a seed's run has no score (None): left out of the
    mean over seeds, "absent" when no seed has one."""
    from mim_nnunet.demo.report import spread, verdict
    assert spread([0.5, None, 0.7]) == "60.0 ± 10.0"
    assert spread([None, None]) == "absent"
    assert verdict([None], [0.5]).startswith("no score")


def test_run_time_names_the_host_and_the_estimate():
    from mim_nnunet.common.host import HostProbe
    from mim_nnunet.demo.report import run_time_lines
    host = HostProbe(cpu_model="Some CPU", cpu_capability="AVX2", threads=2, cpus=2, gpu=None, matmul_gflops=51.0,
                     matmul_size=2048, matmul_products=6, matmul_seconds=2.0, torch="2.14.1")
    lines = run_time_lines({"pre-training": 262.4, "planning": 27.6}, 792.2, host,
                           [("data", 30.0), ("pre-training", 300.4)])
    assert lines == ["- pre-training: 262 s", "- planning: 28 s", "- total: 792 s",
                     f"- {host.line()} (host.json)",
                     "- estimated before the run: 330 s (data 30 s, pre-training 300 s)"]
    assert run_time_lines({}, 5.0) == ["- total: 5 s"]
