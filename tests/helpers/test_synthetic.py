import numpy as np
import SimpleITK as sitk

from helpers.synthetic import DIRECTION, ORIGIN, SPACING, make_case, write_dataset


def test_case_shapes_have_the_expected_volumes():
    rng = np.random.default_rng(3)
    image, label = make_case((64, 64, 64), rng)
    radius, side = 64 / 6, 2 * (64 // 8)
    assert (label == 2).sum() == side ** 3                                   # an exact cube
    assert abs((label == 1).sum() - 4 / 3 * np.pi * radius ** 3) < 0.05 * 4 / 3 * np.pi * radius ** 3
    assert image[label == 1].mean() > image[label == 0].mean() > image[label == 2].mean()


def test_written_dataset_is_complete_and_keeps_geometry(tmp_path):
    root = write_dataset(tmp_path, 7, num_train=2, num_test=1, shape=(32, 32, 32))
    assert sorted(p.name for p in (root / "imagesTr").iterdir()) == ["case_000_0000.nii.gz", "case_001_0000.nii.gz"]
    assert sorted(p.name for p in (root / "labelsTs").iterdir()) == ["case_002.nii.gz"]
    img = sitk.ReadImage(str(root / "imagesTs" / "case_002_0000.nii.gz"))
    assert np.allclose(img.GetSpacing(), SPACING) and np.allclose(img.GetOrigin(), ORIGIN)
    assert np.allclose(img.GetDirection(), DIRECTION)
    assert not list(root.rglob(".tmp_*"))
