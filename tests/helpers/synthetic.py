"""A tiny labelled nnU-Net raw dataset (sphere = 1, cube = 2) for the tests."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from mim_nnunet.common.atomic import atomic_write

LABELS = {"background": 0, "sphere": 1, "cube": 2}
# Intensities in HU-like units: soft tissue background, a bright sphere, a dark cube.
BACKGROUND_HU, SPHERE_HU, CUBE_HU, NOISE_HU = 40.0, 300.0, -200.0, 25.0
# Non-trivial geometry so that tests notice when an output loses spacing, origin or direction.
SPACING = (0.9, 1.0, 1.1)
ORIGIN = (-30.5, 12.0, 7.25)
DIRECTION = (1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)


def make_case(shape: Sequence[int], rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """One volume and its label map, both ``shape`` (z, y, x as SimpleITK arrays are ordered).

    A sphere of radius ~shape/6 and a cube of side ~shape/4 at random, non-overlapping places.
    """
    shape = np.asarray(shape)
    grid = np.indices(tuple(shape)).astype(np.float32)
    label = np.zeros(tuple(shape), np.uint8)
    radius = shape.min() / 6.0
    half = int(shape.min() // 8)
    while True:
        centre = rng.uniform(radius + 2, shape - radius - 2)
        corner = rng.integers(2, shape - 2 * half - 2)
        cube_centre = corner + half
        if np.linalg.norm(centre - cube_centre) > radius + np.sqrt(3) * half + 2:
            break
    dist = np.sqrt(sum((grid[i] - centre[i]) ** 2 for i in range(3)))
    label[dist <= radius] = LABELS["sphere"]
    label[tuple(slice(c, c + 2 * half) for c in corner)] = LABELS["cube"]
    image = np.full(tuple(shape), BACKGROUND_HU, np.float32)
    image[label == LABELS["sphere"]] = SPHERE_HU
    image[label == LABELS["cube"]] = CUBE_HU
    image += rng.normal(0.0, NOISE_HU, tuple(shape)).astype(np.float32)
    return image, label


def _write(array: np.ndarray, path: Path) -> None:
    img = sitk.GetImageFromArray(array)
    img.SetSpacing(SPACING)
    img.SetOrigin(ORIGIN)
    img.SetDirection(DIRECTION)
    # SimpleITK picks the format from the name: keep the real suffix on the temporary file
    atomic_write(path, lambda tmp: sitk.WriteImage(img, str(tmp), useCompression=True))


def write_dataset(raw_root: os.PathLike, dataset_id: int, name: str = "MiMSynthetic", num_train: int = 5,
                  num_test: int = 2, shape: Sequence[int] = (64, 64, 64), seed: int = 0) -> Path:
    """Write ``Dataset{id:03d}_{name}`` (imagesTr, labelsTr, imagesTs, labelsTs, dataset.json).

    ``labelsTs`` holds the ground truth of the test cases, for evaluating predictions.
    """
    rng = np.random.default_rng(seed)
    root = Path(raw_root) / f"Dataset{dataset_id:03d}_{name}"
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(num_train + num_test):
        split = "Tr" if i < num_train else "Ts"
        case = f"case_{i:03d}"
        image, label = make_case(shape, rng)
        _write(image, root / f"images{split}" / f"{case}_0000.nii.gz")
        _write(label, root / f"labels{split}" / f"{case}.nii.gz")
    dataset_json = {
        "channel_names": {"0": "CT"},
        "labels": LABELS,
        "numTraining": num_train,
        "file_ending": ".nii.gz",
        "name": name,
        "description": "synthetic spheres and cubes written by the tests (tests/helpers/synthetic.py)",
    }
    (root / "dataset.json").write_text(json.dumps(dataset_json, indent=2), encoding="utf-8")
    return root
