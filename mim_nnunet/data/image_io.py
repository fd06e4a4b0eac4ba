"""Reading one pre-training case (one file per channel, or a DICOM series folder) and rejecting
what cannot be used, with a one-line reason naming the file."""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import SimpleITK as sitk

from ..common.errors import MimError

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
GEOMETRY_TOLERANCE = 1e-4       # mm (spacing, origin) and direction cosines: header rounding, not a shift


class BadImage(MimError):
    """A file that cannot be used for pre-training (message: 'path: reason')."""


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(IMAGE_SUFFIXES)


def _is_dicom_file(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"          # the DICOM preamble's magic
    except OSError:
        return False


def is_dicom_folder(path: Path) -> bool:
    return path.is_dir() and any(_is_dicom_file(f) for f in path.iterdir() if f.is_file())


def nifti_problem(path: Path) -> Optional[str]:
    """Why a NIfTI file is incomplete or empty, or None. ITK reads a truncated .nii/.nii.gz without complaint
    (missing voxels become 0) and an empty axis as length 1, so the header is checked here."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as fh:
            head = fh.read(540)
            for endian in "<>":
                size = struct.unpack(endian + "i", head[:4])[0]
                if size in (348, 540):
                    break
            else:
                return "not a NIfTI header"
            if size == 348:
                dims = struct.unpack(endian + "8h", head[40:56])
                datatype, bitpix = struct.unpack(endian + "2h", head[70:74])
                offset = int(struct.unpack(endian + "f", head[108:112])[0])
            else:
                dims = struct.unpack(endian + "8q", head[16:80])
                datatype, bitpix = struct.unpack(endian + "2h", head[12:16])
                offset = struct.unpack(endian + "q", head[168:176])[0]
            axes = [int(d) for d in dims[1:1 + max(0, min(dims[0], 7))]]
            if any(d <= 0 for d in axes):
                return f"zero-size axis {tuple(axes)} in the NIfTI header"
            voxels = 1
            for d in axes:
                voxels *= max(int(d), 0)
            expected = offset + voxels * bitpix // 8
            # SimpleITK turns NaN/inf of float NIfTI into 0, so they are counted here, from the raw bytes
            finite = FiniteCounter(NIFTI_FLOAT_DTYPES.get(datatype), endian, offset, expected)
            length = len(head)
            finite.feed(head)
            for block in iter(lambda: fh.read(1 << 20), b""):
                length += len(block)
                finite.feed(block)
    except (EOFError, OSError, gzip.BadGzipFile) as exc:
        return f"truncated or corrupt ({exc})"
    except struct.error:
        return "truncated header"
    if length < expected:
        return f"truncated: {length} of {expected} bytes"
    if finite.bad:
        return f"{finite.bad} NaN or infinite voxel(s) (float data; SimpleITK would read them as 0)"
    return None


# NIfTI datatype codes of real floating-point voxels (complex types are not images we read)
NIFTI_FLOAT_DTYPES = {16: "f4", 64: "f8"}


class FiniteCounter:
    """Counts non-finite values of ``dtype`` in the bytes ``[start, stop)`` of a stream fed in blocks."""

    def __init__(self, dtype: Optional[str], endian: str, start: int, stop: int):
        self.dtype = np.dtype(endian + dtype) if dtype else None
        self.start, self.stop, self.position, self.carry, self.bad = start, stop, 0, b"", 0

    def feed(self, block: bytes) -> None:
        if self.dtype is None:
            return
        lo, hi = self.position, self.position + len(block)
        self.position = hi
        part = self.carry + block[max(self.start - lo, 0):max(min(self.stop, hi) - lo, 0)]
        whole = len(part) - len(part) % self.dtype.itemsize
        if whole:
            self.bad += int((~np.isfinite(np.frombuffer(part[:whole], self.dtype))).sum())
        self.carry = part[whole:]


def read_image(path: str) -> sitk.Image:
    """One image file or DICOM series folder; :class:`BadImage` (one line) when it cannot be read."""
    p = Path(path)
    if not p.exists():
        raise BadImage(f"{path}: file not found")
    if p.is_file() and p.name.lower().endswith((".nii", ".nii.gz")):
        problem = nifti_problem(p)
        if problem:
            raise BadImage(f"{path}: {problem}")
    sitk.ProcessObject_SetGlobalWarningDisplay(False)   # ITK's warnings would bury the report
    try:
        if p.is_dir():
            series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(p))
            if not series:
                raise BadImage(f"{path}: folder holds no DICOM series")
            files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(p), series[0])
            problem = slice_gap_problem(files)
            if problem:
                raise BadImage(f"{path}: {problem}")
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames(files)
            return reader.Execute()
        return sitk.ReadImage(str(p))
    except BadImage:
        raise
    except Exception as exc:  # ITK raises RuntimeError with a multi-line message
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()] or [type(exc).__name__]
        reason = next((ln.split("ERROR:", 1)[1].strip() for ln in lines if "ERROR:" in ln), lines[-1])
        raise BadImage(f"{path}: unreadable ({reason[:200]})") from None


def slice_gap_problem(files: Sequence[str], tolerance: float = 0.1) -> Optional[str]:
    """Why the slices of a DICOM series are not evenly spaced (a missing or duplicated slice), or None.
    ITK stacks them with one spacing, so 31 of 32 slices 5 mm apart would become 31 slices 5.167 mm apart."""
    positions = []
    for f in files:
        r = sitk.ImageFileReader()
        r.SetFileName(f)
        r.ReadImageInformation()
        if not (r.HasMetaDataKey("0020|0032") and r.HasMetaDataKey("0020|0037")):
            return None                              # no geometry tags: nothing to check against
        origin = np.array([float(v) for v in r.GetMetaData("0020|0032").split("\\")])
        cosines = np.array([float(v) for v in r.GetMetaData("0020|0037").split("\\")])
        positions.append(float(origin @ np.cross(cosines[:3], cosines[3:])))
    if len(positions) < 3:
        return None
    gaps = np.diff(np.sort(positions))
    step = float(np.median(gaps))
    off = np.flatnonzero(np.abs(gaps - step) > tolerance * max(step, 1e-6))
    if off.size:
        i = int(off[0])
        return (f"uneven slice positions: {gaps[i]:.3g} mm between slices {i} and {i + 1} where the series steps "
                f"{step:.3g} mm ({off.size} such gap(s): a missing or duplicated slice)")
    return None


def check_volume(image: sitk.Image, name: str) -> None:
    """3D, every axis non-empty, one component, finite voxels; else :class:`BadImage`."""
    if image.GetDimension() != 3:
        raise BadImage(f"{name}: {image.GetDimension()}D image, pre-training needs 3D volumes")
    if min(image.GetSize()) == 0:
        raise BadImage(f"{name}: zero-size axis {image.GetSize()}")
    if min(image.GetSize()) == 1:
        raise BadImage(f"{name}: a single slice {image.GetSize()} is a 2D image, pre-training needs 3D volumes")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise BadImage(f"{name}: {image.GetNumberOfComponentsPerPixel()} components per voxel, expected 1")
    array = sitk.GetArrayViewFromImage(image)
    if not np.isfinite(array).all():
        raise BadImage(f"{name}: NaN or infinite voxels")


def geometry_difference(a: sitk.Image, b: sitk.Image, tolerance: float = GEOMETRY_TOLERANCE) -> Optional[str]:
    """How the grids of two images differ (size, spacing, origin, direction), or None when they match."""
    if a.GetSize() != b.GetSize():
        return f"size {a.GetSize()} vs {b.GetSize()}"
    for name in ("Spacing", "Origin", "Direction"):
        va, vb = getattr(a, f"Get{name}")(), getattr(b, f"Get{name}")()
        if not np.allclose(va, vb, atol=tolerance):
            return f"{name.lower()} {tuple(round(v, 4) for v in va)} vs {tuple(round(v, 4) for v in vb)}"
    return None


def read_case(files: Sequence[str]) -> sitk.Image:
    """The case's channels as one float32 image (vector image when more than one channel)."""
    images = []
    for f in files:
        img = read_image(os.fspath(f))
        check_volume(img, os.fspath(f))
        images.append(sitk.Cast(img, sitk.sitkFloat32))
    first = images[0]
    for f, img in zip(files[1:], images[1:]):
        problem = geometry_difference(img, first, tolerance=1e-3)
        if problem:
            raise BadImage(f"{f}: geometry differs from the case's first channel {files[0]} ({problem})")
    return first if len(images) == 1 else sitk.Compose(images)
