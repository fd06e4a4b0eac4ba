"""Synthetic copies of the downstream datasets' distributed layouts: the real folder and file names, a few
small cases, label maps with the datasets' real class values (one ball per class at a random place)."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Iterable, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

SHAPE = (24, 40, 40)                      # (z, y, x): small enough for nnU-Net on a CPU
SPACING = (0.8, 0.8, 2.5)                 # (x, y, z) mm: thin in-plane, thick slices, as abdominal CT
ORIGIN = (-160.0, -150.5, 30.0)
DIRECTION = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)

# The published class values of each dataset (facts, cited in mim_nnunet/downstream/converters.py).
VALUES = {
    "btcv": tuple(range(1, 14)),
    "mmwhs_ct": (205, 420, 500, 550, 600, 820, 850),
    "flare22": tuple(range(1, 14)),
    "covid19_20": (1,),
}


def make_case(values: Sequence[int], rng: np.random.Generator, shape=SHAPE) -> Tuple[np.ndarray, np.ndarray]:
    """A CT-like int16 volume (air outside a body, soft tissue inside) and a label map with a ball per value."""
    z, y, x = np.indices(shape)
    body = ((y - shape[1] / 2) ** 2 + (x - shape[2] / 2) ** 2) < (0.45 * shape[1]) ** 2
    image = np.where(body, 40, -1000).astype(np.float32) + rng.normal(0, 20, shape)
    label = np.zeros(shape, np.uint16)
    for v in values:
        c = rng.uniform((3, 8, 8), (shape[0] - 3, shape[1] - 8, shape[2] - 8))
        ball = ((z - c[0]) / 2.5) ** 2 + ((y - c[1]) / 4) ** 2 + ((x - c[2]) / 4) ** 2 <= 1
        label[ball] = v
        image[ball] = 100 + (int(v) % 9) * 40
    return np.clip(image, -1024, 3071).astype(np.int16), label


def write_image(array: np.ndarray, path: Path, spacing=SPACING, origin=ORIGIN) -> Path:
    img = sitk.GetImageFromArray(array)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    img.SetDirection(DIRECTION)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path), useCompression=True)
    return path


def _cases(key: str, names: Iterable[Tuple[Path, Path]], seed: int) -> Dict[str, Tuple[Path, Path]]:
    rng = np.random.default_rng(seed)
    written = {}
    for image_path, label_path in names:
        image, label = make_case(VALUES[key], rng)
        write_image(image, image_path)
        if label_path is not None:
            write_image(label.astype(np.uint8) if max(VALUES[key]) < 256 else label, label_path)
        written[image_path.name] = (image_path, label_path)
    return written


def write_btcv(root: Path, numbers: Sequence[int] = (1, 2, 35, 36), test: Sequence[int] = (61,), seed: int = 0) -> Path:
    """``root/RawData/Training/img/img0001.nii.gz``, ``.../label/label0001.nii.gz``, ``Testing/img/img0061.nii.gz``;
    returns the RawData folder."""
    raw = Path(root) / "RawData"
    _cases("btcv", [(raw / "Training" / "img" / f"img{n:04d}.nii.gz", raw / "Training" / "label" / f"label{n:04d}.nii.gz")
                    for n in numbers] + [(raw / "Testing" / "img" / f"img{n:04d}.nii.gz", None) for n in test], seed)
    return raw


def write_mmwhs(root: Path, numbers: Sequence[int] = (1001, 1002, 1005), seed: int = 0) -> Path:
    """``root/ct_train/ct_train_1001_image.nii.gz`` and ``..._label.nii.gz``; returns ``root``."""
    folder = Path(root) / "ct_train"
    _cases("mmwhs_ct", [(folder / f"ct_train_{n}_image.nii.gz", folder / f"ct_train_{n}_label.nii.gz")
                        for n in numbers], seed)
    return Path(root)


def write_flare22(root: Path, numbers: Sequence[int] = (1, 2, 3), seed: int = 0) -> Path:
    """``root/FLARE22Train/images/FLARE22_Tr_0001_0000.nii.gz``, ``labels/FLARE22_Tr_0001.nii.gz``; returns the
    FLARE22Train folder."""
    folder = Path(root) / "FLARE22Train"
    _cases("flare22", [(folder / "images" / f"FLARE22_Tr_{n:04d}_0000.nii.gz", folder / "labels" / f"FLARE22_Tr_{n:04d}.nii.gz")
                       for n in numbers], seed)
    return folder


def write_covid(root: Path, numbers: Sequence[int] = (3, 11, 13), test: Sequence[int] = (700,), seed: int = 0) -> Path:
    """``root/COVID-19-20_v2/Train/volume-covid19-A-0003_ct.nii.gz`` + ``_seg.nii.gz``, ``Validation/..._ct.nii.gz``;
    returns the COVID-19-20_v2 folder."""
    folder = Path(root) / "COVID-19-20_v2"
    _cases("covid19_20", [(folder / "Train" / f"volume-covid19-A-{n:04d}_ct.nii.gz",
                           folder / "Train" / f"volume-covid19-A-{n:04d}_seg.nii.gz") for n in numbers]
           + [(folder / "Validation" / f"volume-covid19-A-{n:04d}_ct.nii.gz", None) for n in test], seed)
    return folder


WRITERS = {"btcv": write_btcv, "mmwhs_ct": write_mmwhs, "flare22": write_flare22, "covid19_20": write_covid}
