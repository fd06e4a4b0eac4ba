"""Preprocessing into the crop store: orientation RAS, resampling to the plan's spacing, intensity
scheme, one ``.npy`` per case (memory-mappable: a crop reads only its own bytes). Parallel, resumable
(finished cases are skipped), atomic per case (array, then its ``.json``, each renamed into place);
bad files are skipped and reported."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import SimpleITK as sitk

from ..common.atomic import atomic_write, write_json_atomic
from ..common.errors import MimError
from ..common.parallel import map_cases
from .image_io import BadImage, read_case
from .intensity import apply_intensity, foreground_coordinates

STORE_DTYPE = "float16"                 # [0, 1] CT in float16: steps of 1/2048, about 1 HU
STORE_ORIENTATION = "RAS"               # every case is reoriented so that array axes mean the same everywhere
STORE_AXES = ("z", "y", "x")            # array axis order of the store (SimpleITK's GetArrayFromImage)
REPORT = "report.json"


def case_paths(store: Path, case_id: str):
    """(array, metadata) of a stored case; the metadata is written last and marks the case complete."""
    return store / f"{case_id}.npy", store / f"{case_id}.json"


def foreground_path(store: Path, case_id: str) -> Path:
    """The case's foreground: ``coords`` ``(K, 3)`` (z, y, x) sampled voxels and ``voxels``, their total count."""
    return store / f"{case_id}.fg.npz"


def write_foreground(store: Path, case_id: str, array: np.ndarray, modality: str, plan: Dict) -> None:
    """Sample and store the case's foreground coordinates (seeded by the case id: reruns agree)."""
    seed = int(hashlib.sha256(case_id.encode()).hexdigest()[:8], 16)
    coords, voxels = foreground_coordinates(array, modality, plan["intensity"], plan["foreground"],
                                            np.random.default_rng(seed))

    def save(tmp: Path) -> None:
        with open(tmp, "wb") as fh:    # a handle: np.savez would append ".npz" to the temporary name
            np.savez(fh, coords=coords, voxels=np.int64(voxels))
    atomic_write(foreground_path(store, case_id), save)


def resample_to_spacing(image: sitk.Image, spacing_zyx) -> sitk.Image:
    """Linear resampling onto the same origin and direction with the target spacing."""
    new_spacing = [float(s) for s in spacing_zyx[::-1]]
    size = [max(1, int(round(n * s / t))) for n, s, t in zip(image.GetSize(), image.GetSpacing(), new_spacing)]
    return sitk.Resample(image, size, sitk.Transform(), sitk.sitkLinear, image.GetOrigin(), new_spacing,
                         image.GetDirection(), 0.0, image.GetPixelID())


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as fh:     # a handle: np.save would append ".npy" to a bare name
        np.save(fh, array)


def geometry_zyx(image: sitk.Image) -> Dict:
    """The stored grid in one convention, numpy's (z, y, x) array order for every entry: ``spacing`` per array
    axis, ``origin`` the world point (LPS, mm; components reversed) of voxel (0, 0, 0), ``direction`` the 3 x 3
    matrix (reversed rows and columns of ITK's), so that ``world_zyx = origin + direction @ (spacing * index_zyx)``."""
    return {"axes": "zyx", "spacing": list(image.GetSpacing())[::-1], "origin": list(image.GetOrigin())[::-1],
            "direction": np.asarray(image.GetDirection()).reshape(3, 3)[::-1, ::-1].tolist()}


def preprocess_case(job) -> Dict:
    case, plan, store = job
    npy, meta = case_paths(Path(store), case["case_id"])
    if npy.is_file() and meta.is_file():
        if not foreground_path(Path(store), case["case_id"]).is_file():   # a store written before sampling did
            write_foreground(Path(store), case["case_id"], np.load(npy, mmap_mode="r"), case["modality"], plan)
        return {"case_id": case["case_id"], "status": "done_before"}
    files = [f["path"] for f in case["files"]]
    try:
        image = sitk.DICOMOrient(read_case(files), plan["orientation"])
    except BadImage as exc:
        return {"case_id": case["case_id"], "status": "skipped", "files": files, "reason": str(exc)}
    image = resample_to_spacing(image, plan["target_spacing"])
    array = sitk.GetArrayFromImage(image).astype(np.float32)
    array = array[None] if array.ndim == 3 else np.moveaxis(array, -1, 0)            # (C, Z, Y, X)
    array, background = apply_intensity(array, case["modality"], plan["intensity"])
    stored = array.astype(plan["store_dtype"])
    atomic_write(npy, lambda tmp: _save_npy(tmp, stored))
    write_foreground(Path(store), case["case_id"], stored, case["modality"], plan)
    write_json_atomic(meta, {"case_id": case["case_id"], "source": case["source"], "modality": case["modality"],
                             "shape": list(array.shape), **geometry_zyx(image),
                             "background": background, "files": files})
    return {"case_id": case["case_id"], "status": "ok"}


def preprocess(manifest: Dict, plan: Dict, store: Path, num_processes: int = 2) -> Dict:
    """Preprocess every manifest case into ``store``; return and write ``store/report.json``."""
    store.mkdir(parents=True, exist_ok=True)
    jobs = [(case, plan, str(store)) for case in manifest["cases"]]
    results = map_cases(preprocess_case, jobs, num_processes, "Preprocessing", ordered=False)
    report = {
        "store": str(store), "manifest_hash": manifest["hash"],
        "ok": sorted(r["case_id"] for r in results if r["status"] in ("ok", "done_before")),
        "done_before": sum(r["status"] == "done_before" for r in results),
        "skipped": sorted(({"case_id": r["case_id"], "files": r["files"], "reason": r["reason"]}
                           for r in results if r["status"] == "skipped"), key=lambda r: r["case_id"]),
    }
    write_json_atomic(store / REPORT, report)
    if not report["ok"]:
        raise MimError(f"no usable case in {store}: all {len(report['skipped'])} were skipped "
                       f"(see {store / REPORT})")
    return report


def load_case_meta(store: Path, case_id: str) -> Dict:
    return json.loads(case_paths(store, case_id)[1].read_text(encoding="utf-8"))


def stored_case_ids(store: Path) -> List[str]:
    """Cases whose array and metadata are both complete."""
    return sorted(p.stem for p in store.glob("*.json") if p.name != REPORT and p.with_suffix(".npy").is_file())


def load_foreground(store: Path, case_id: str) -> Tuple[np.ndarray, int]:
    """(sampled foreground coordinates ``(K, 3)``, total foreground voxels) of a case; ``((0, 3), 0)`` when
    the store has none for it."""
    path = foreground_path(store, case_id)
    if not path.is_file():
        return np.zeros((0, 3), np.int32), 0
    with np.load(path) as data:
        return data["coords"], int(data["voxels"])
