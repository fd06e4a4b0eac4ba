"""Converters from the distributed layouts of the MiM paper's downstream datasets (Table 2) that stock
nnU-Net 2.8 cannot convert (BTCV, MM-WHS CT, FLARE22, COVID-19-20) to nnU-Net raw datasets.

Each converter reads what the dataset's owners distribute, checks it (the file names and the number of
cases, the label values against the dataset's published classes, image/label geometry, unreadable or
truncated files) and stops at the first problem with one line naming the file. Labels are written as
consecutive class ids (``dataset.json`` ``labels``) on their image's exact grid; images are copied
unchanged. ``dataset.json`` records where each class came from (``mim_nnunet.label_values``) so that
predictions can be mapped back to the dataset's own values. Writes are atomic per file and
``dataset.json`` comes last, so an interrupted conversion is never mistaken for a finished one.

MSD tasks, AMOS 2022 and BraTS 2021 have stock nnU-Net converters; docs/downstream.md gives their commands.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from ..common.atomic import atomic_write, write_json_atomic
from ..common.environment import require_nnunet_paths
from ..common.errors import MimError
from ..data.image_io import check_volume, geometry_difference, read_image

FILE_ENDING = ".nii.gz"


class ConversionError(MimError):
    """The source folder is not the dataset's distributed layout, or one of its files is wrong."""


@dataclass(frozen=True)
class Case:
    case_id: str                    # nnU-Net case identifier
    image: Path
    label: Optional[Path]           # None for test images


@dataclass(frozen=True)
class DownstreamDataset:
    """One dataset: where it comes from, its layout, its classes and the nnU-Net dataset it becomes."""

    key: str                                   # name on the command line
    title: str
    dataset_id: int                            # default nnU-Net id (-d overrides)
    dataset_name: str                          # nnU-Net name: Dataset<id>_<dataset_name>
    classes: Dict[str, int]                    # class name -> value in the distributed label files, in order
    expected_cases: Tuple[str, ...]            # case ids of the published training set ...
    expected_count: int                        # ... or just their number when ids are not enumerable
    layout: str                                # the distributed layout, for error messages and docs/downstream.md
    obtain: str
    reference: str
    licence: str
    find: Callable[[Path], Tuple[List[Case], List[Case]]] = field(repr=False, compare=False)


def _folder(path: Path, layout: str) -> Path:
    if not path.is_dir():
        raise ConversionError(f"{path}: no such folder; expected {layout}")
    return path


def _match(folder: Path, pattern: str, layout: str) -> Dict[str, Path]:
    """``{number: file}`` for the files of ``folder`` named ``pattern`` (one group: the case number); any other
    ``.nii.gz`` there is an error naming it."""
    found = {}
    for f in sorted(folder.iterdir()):
        if not f.name.endswith(FILE_ENDING):
            continue
        m = re.fullmatch(pattern, f.name)
        if not m:
            raise ConversionError(f"{f}: unexpected file name; expected {layout}")
        found[m.group(1)] = f
    return found


def _pair(images: Dict[str, Path], labels: Dict[str, Path], case_id: Callable[[str], str],
          label_name: Callable[[str], str], image_name: Callable[[str], str], label_dir: Path,
          image_dir: Path) -> List[Case]:
    for number in sorted(images):
        if number not in labels:
            raise ConversionError(f"{label_dir / label_name(number)}: missing (the label of {images[number].name})")
    for number in sorted(labels):
        if number not in images:
            raise ConversionError(f"{image_dir / image_name(number)}: missing (the image of {labels[number].name})")
    return [Case(case_id(n), images[n], labels[n]) for n in sorted(images)]


# ---------------------------------------------------------------------------------------------------------------
# BTCV: Synapse "Multi-Atlas Labeling Beyond the Cranial Vault" (syn3193805), Abdomen/RawData.zip:
# RawData/Training/img/img0001.nii.gz, RawData/Training/label/label0001.nii.gz (30 labelled cases,
# img0001-0010 and img0021-0040), RawData/Testing/img/img0061-0080.nii.gz (20, no labels). Layout as
# unpacked in Project-MONAI/research-contributions UNETR/BTCV and SwinUNETR/BTCV READMEs.
# Classes 1-13 as published with the challenge and used by nnU-Net v1's Task017 conversion
# (MIC-DKFZ/nnUNet nnunet/dataset_conversion/Task017_BeyondCranialVaultAbdominalOrganSegmentation.py).
BTCV_LAYOUT = "the Synapse RawData layout: Training/img/img0001.nii.gz, Training/label/label0001.nii.gz, " \
              "Testing/img/img0061.nii.gz"
BTCV_CLASSES = {"spleen": 1, "right kidney": 2, "left kidney": 3, "gallbladder": 4, "esophagus": 5, "liver": 6,
                "stomach": 7, "aorta": 8, "inferior vena cava": 9, "portal vein and splenic vein": 10,
                "pancreas": 11, "right adrenal gland": 12, "left adrenal gland": 13}


def _btcv_root(src: Path) -> Path:
    return src / "RawData" if (src / "RawData").is_dir() and not (src / "Training").is_dir() else src


def find_btcv(src: Path) -> Tuple[List[Case], List[Case]]:
    root = _btcv_root(src)
    img_dir = _folder(root / "Training" / "img", BTCV_LAYOUT)
    lab_dir = _folder(root / "Training" / "label", BTCV_LAYOUT)
    images = _match(img_dir, r"img(\d{4})\.nii\.gz", BTCV_LAYOUT)
    labels = _match(lab_dir, r"label(\d{4})\.nii\.gz", BTCV_LAYOUT)
    train = _pair(images, labels, lambda n: f"BTCV_{n}", lambda n: f"label{n}{FILE_ENDING}",
                  lambda n: f"img{n}{FILE_ENDING}", lab_dir, img_dir)
    test_dir = root / "Testing" / "img"
    test = [Case(f"BTCV_{n}", p, None) for n, p in
            sorted(_match(test_dir, r"img(\d{4})\.nii\.gz", BTCV_LAYOUT).items())] if test_dir.is_dir() else []
    return train, test


# ---------------------------------------------------------------------------------------------------------------
# MM-WHS 2017 CT (Zhuang 2018; zmiclab.github.io/zxh/0/mmwhs): the CT_train archive unpacks to
# ct_train/ct_train_1001_image.nii.gz + ct_train_1001_label.nii.gz, cases 1001-1020; ct_test/ holds
# ct_test_2001_image.nii.gz ... without labels. Label values of the challenge: 205 myocardium of the left
# ventricle, 420 left atrium blood cavity, 500 left ventricle blood cavity, 550 right atrium blood cavity,
# 600 right ventricle blood cavity, 820 ascending aorta, 850 pulmonary artery (the MiM release's
# Finetune/jsons/MMWHS_ct.json lists the same).
MMWHS_LAYOUT = "the MM-WHS CT_train layout: ct_train/ct_train_1001_image.nii.gz and ct_train/ct_train_1001_label.nii.gz"
MMWHS_CLASSES = {"left ventricle myocardium": 205, "left atrium blood cavity": 420,
                 "left ventricle blood cavity": 500, "right atrium blood cavity": 550,
                 "right ventricle blood cavity": 600, "ascending aorta": 820, "pulmonary artery": 850}


def find_mmwhs(src: Path) -> Tuple[List[Case], List[Case]]:
    folder = _folder(src / "ct_train" if (src / "ct_train").is_dir() else src, MMWHS_LAYOUT)
    images, labels = {}, {}
    for f in sorted(folder.iterdir()):
        if not f.name.endswith(FILE_ENDING):
            continue
        m = re.fullmatch(r"ct_train_(\d{4})_(image|label)\.nii\.gz", f.name)
        if not m:
            raise ConversionError(f"{f}: unexpected file name; expected {MMWHS_LAYOUT}")
        (images if m.group(2) == "image" else labels)[m.group(1)] = f
    train = _pair(images, labels, lambda n: f"MMWHS_{n}", lambda n: f"ct_train_{n}_label{FILE_ENDING}",
                  lambda n: f"ct_train_{n}_image{FILE_ENDING}", folder, folder)
    test_dir = src / "ct_test"
    test = [Case(f"MMWHS_{n}", p, None) for n, p in
            sorted(_match(test_dir, r"ct_test_(\d{4})_image\.nii\.gz", MMWHS_LAYOUT).items())] \
        if test_dir.is_dir() else []
    return train, test


# ---------------------------------------------------------------------------------------------------------------
# FLARE22 (flare22.grand-challenge.org): FLARE22Train/images/FLARE22_Tr_0001_0000.nii.gz and
# FLARE22Train/labels/FLARE22_Tr_0001.nii.gz, 50 labelled cases (the 2000 unlabelled ones are not used).
# Classes 1-13 in the order of the organisers' evaluation script (JunMa11/FLARE,
# FLARE22/Evaluation/FLARE22_DSC_NSD_Eval.py: Liver, RK, Spleen, Pancreas, Aorta, IVC, RAG, LAG,
# Gallbladder, Esophagus, Stomach, Duodenum, LK).
FLARE22_LAYOUT = "the FLARE22 layout: FLARE22Train/images/FLARE22_Tr_0001_0000.nii.gz and " \
                 "FLARE22Train/labels/FLARE22_Tr_0001.nii.gz"
FLARE22_CLASSES = {"liver": 1, "right kidney": 2, "spleen": 3, "pancreas": 4, "aorta": 5, "inferior vena cava": 6,
                   "right adrenal gland": 7, "left adrenal gland": 8, "gallbladder": 9, "esophagus": 10,
                   "stomach": 11, "duodenum": 12, "left kidney": 13}


def find_flare22(src: Path) -> Tuple[List[Case], List[Case]]:
    root = src / "FLARE22Train" if (src / "FLARE22Train").is_dir() else src
    img_dir = _folder(root / "images", FLARE22_LAYOUT)
    lab_dir = _folder(root / "labels", FLARE22_LAYOUT)
    images = _match(img_dir, r"FLARE22_Tr_(\d{4})_0000\.nii\.gz", FLARE22_LAYOUT)
    labels = _match(lab_dir, r"FLARE22_Tr_(\d{4})\.nii\.gz", FLARE22_LAYOUT)
    return _pair(images, labels, lambda n: f"FLARE22_Tr_{n}", lambda n: f"FLARE22_Tr_{n}{FILE_ENDING}",
                 lambda n: f"FLARE22_Tr_{n}_0000{FILE_ENDING}", lab_dir, img_dir), []


# ---------------------------------------------------------------------------------------------------------------
# COVID-19-20 (covid-segmentation.grand-challenge.org; Roth et al. 2022): COVID-19-20_v2/Train/
# volume-covid19-A-0003_ct.nii.gz + volume-covid19-A-0003_seg.nii.gz (199 cases), Validation/*_ct.nii.gz without
# labels; label 1 = COVID-19 lesion. Layout and count as nnU-Net v1's Task115_COVIDSegChallenge.py reads them;
# the MiM release's Finetune/jsons/Covid19_20_folds.json lists the same 199 training cases.
COVID_LAYOUT = "the COVID-19-20 layout: Train/volume-covid19-A-0003_ct.nii.gz and Train/volume-covid19-A-0003_seg.nii.gz"
COVID_CLASSES = {"lesion": 1}


def find_covid(src: Path) -> Tuple[List[Case], List[Case]]:
    if not (src / "Train").is_dir() and (src / "COVID-19-20_v2").is_dir():
        src = src / "COVID-19-20_v2"
    folder = _folder(src / "Train" if (src / "Train").is_dir() else src, COVID_LAYOUT)
    images, labels = {}, {}
    for f in sorted(folder.iterdir()):
        if not f.name.endswith(FILE_ENDING):
            continue
        m = re.fullmatch(r"(volume-covid19-A-\d{4})_(ct|seg)\.nii\.gz", f.name)
        if not m:
            raise ConversionError(f"{f}: unexpected file name; expected {COVID_LAYOUT}")
        (images if m.group(2) == "ct" else labels)[m.group(1)] = f
    train = _pair(images, labels, lambda n: n, lambda n: f"{n}_seg{FILE_ENDING}", lambda n: f"{n}_ct{FILE_ENDING}",
                  folder, folder)
    test_dir = src / "Validation"
    test = []
    if test_dir.is_dir():
        for f in sorted(test_dir.glob(f"*_ct{FILE_ENDING}")):
            test.append(Case(f.name[:-len(f"_ct{FILE_ENDING}")], f, None))
    return train, test


DATASETS: Dict[str, DownstreamDataset] = {d.key: d for d in (
    DownstreamDataset(
        "btcv", "BTCV (Multi-Atlas Labeling Beyond the Cranial Vault), 13 abdominal organs", 501, "BTCV",
        BTCV_CLASSES, tuple(f"BTCV_{n:04d}" for n in [*range(1, 11), *range(21, 41)]), 30, BTCV_LAYOUT,
        "Synapse syn3193805 (registration), Abdomen/RawData.zip", "https://www.synapse.org/#!Synapse:syn3193805",
        "see the Synapse challenge page", find_btcv),
    DownstreamDataset(
        "mmwhs_ct", "MM-WHS 2017 CT, 7 cardiac structures", 502, "MMWHS_CT",
        MMWHS_CLASSES, tuple(f"MMWHS_{n}" for n in range(1001, 1021)), 20, MMWHS_LAYOUT,
        "MM-WHS 2017 challenge (registration), CT_train", "https://zmiclab.github.io/zxh/0/mmwhs/",
        "see the MM-WHS challenge page", find_mmwhs),
    DownstreamDataset(
        "flare22", "FLARE22, 13 abdominal organs", 503, "FLARE22",
        FLARE22_CLASSES, tuple(f"FLARE22_Tr_{n:04d}" for n in range(1, 51)), 50, FLARE22_LAYOUT,
        "FLARE22 challenge (registration), FLARE22Train", "https://flare22.grand-challenge.org/",
        "see the FLARE22 challenge page", find_flare22),
    DownstreamDataset(
        "covid19_20", "COVID-19-20 lung CT lesion segmentation", 504, "COVID19_20",
        COVID_CLASSES, (), 199, COVID_LAYOUT,
        "COVID-19-20 challenge (registration), COVID-19-20_v2", "https://covid-segmentation.grand-challenge.org/",
        "see the COVID-19-20 challenge page (CC BY-NC 4.0 per TCIA)", find_covid),
)}


def get_dataset(key: str) -> DownstreamDataset:
    if key not in DATASETS:
        raise ConversionError(f"unknown dataset '{key}': ours are {', '.join(DATASETS)} (MSD tasks, AMOS 2022 and "
                              f"BraTS 2021 have stock nnU-Net converters, see docs/downstream.md)")
    return DATASETS[key]


def check_count(spec: DownstreamDataset, train: Sequence[Case], src: Path, allow_partial: bool) -> None:
    """The published training set, complete (else a one-line error listing what is missing or unexpected)."""
    ids = [c.case_id for c in train]
    if not ids:
        raise ConversionError(f"{src}: no training cases found; expected {spec.layout}")
    if spec.expected_cases:
        unknown = [c for c in train if c.case_id not in spec.expected_cases]
        if unknown:
            raise ConversionError(f"{unknown[0].image}: not one of the {len(spec.expected_cases)} published "
                                  f"{spec.key} training cases")
        missing = [c for c in spec.expected_cases if c not in ids]
        if missing and not allow_partial:
            raise ConversionError(f"{src}: {len(ids)} of the {spec.expected_count} {spec.key} training cases; missing "
                                  f"case(s) {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''} "
                                  f"(--allow_partial converts what is there)")
    elif len(ids) != spec.expected_count and not allow_partial:
        raise ConversionError(f"{src}: {len(ids)} {spec.key} training cases, the published set has "
                              f"{spec.expected_count} (--allow_partial converts what is there)")


def _read(path: Path) -> sitk.Image:
    image = read_image(str(path))
    check_volume(image, str(path))
    return image


def label_map(spec: DownstreamDataset, label: sitk.Image, path: Path) -> np.ndarray:
    """The label's voxels as consecutive class ids (uint8); one-line error naming ``path`` for values that are
    not the dataset's published classes."""
    values = sitk.GetArrayViewFromImage(label)
    found = np.unique(values)
    allowed = {0, *spec.classes.values()}
    wrong = [v for v in found.tolist() if v not in allowed]
    if wrong:
        shown = ", ".join(f"{v:g}" for v in wrong[:5])
        raise ConversionError(f"{path}: label values {shown} are not {spec.key} classes "
                              f"({', '.join(str(v) for v in sorted(allowed))})")
    lookup = {v: i for i, v in enumerate(spec.classes.values(), start=1)}
    out = np.zeros(values.shape, np.uint8)
    for value, new in lookup.items():
        out[values == value] = new
    return out


def _write_image(src: Path, dst: Path, image: sitk.Image) -> None:
    if src.name.endswith(FILE_ENDING):
        atomic_write(dst, lambda tmp: shutil.copyfile(src, tmp))       # unchanged bytes
    else:
        atomic_write(dst, lambda tmp: sitk.WriteImage(image, str(tmp), useCompression=True))


def convert_case(spec: DownstreamDataset, case: Case, root: Path, split: str) -> None:
    """Check one case, then write it into ``root`` (``imagesTr``/``labelsTr`` or ``imagesTs``)."""
    image = _read(case.image)
    out = None
    if case.label is not None:
        label = _read(case.label)
        problem = geometry_difference(label, image)
        if problem:
            raise ConversionError(f"{case.label}: geometry differs from its image {case.image.name} ({problem})")
        out = sitk.GetImageFromArray(label_map(spec, label, case.label))
        out.CopyInformation(image)              # the image's exact grid (the check above allows rounding)
    _write_image(case.image, root / f"images{split}" / f"{case.case_id}_0000{FILE_ENDING}", image)
    if out is not None:
        atomic_write(root / f"labels{split}" / f"{case.case_id}{FILE_ENDING}",
                     lambda tmp: sitk.WriteImage(out, str(tmp), useCompression=True))


def convert(key: str, src: os.PathLike, dataset_id: Optional[int] = None, allow_partial: bool = False,
            split: str = "literature", overwrite: bool = False, log=print) -> Path:
    """Convert the distributed dataset in ``src`` into ``$nnUNet_raw/Dataset<id>_<name>``; return that folder.

    ``split``: ``literature`` writes the published split (when the dataset has one) as the raw folder's
    ``splits_final.json``, which ``nnUNetv2_plan_and_preprocess`` copies for training; ``nnunet`` writes none,
    so nnU-Net makes its own 5 folds.
    """
    from tqdm import tqdm

    from .splits import LITERATURE, SPLITS_FILE, literature_splits

    spec = get_dataset(key)
    src = Path(src)
    if not src.is_dir():
        raise ConversionError(f"{src}: no such folder; expected {spec.layout} (from: {spec.obtain})")
    dataset_id = spec.dataset_id if dataset_id is None else int(dataset_id)
    if not 1 <= dataset_id <= 999:
        raise ConversionError(f"dataset id {dataset_id}: nnU-Net ids are 1-999")
    raw = Path(require_nnunet_paths(("nnUNet_raw",))["nnUNet_raw"])
    name = f"Dataset{dataset_id:03d}_{spec.dataset_name}"
    root = raw / name
    others = [p.name for p in raw.glob(f"Dataset{dataset_id:03d}_*") if p.name != name]
    if others:
        raise ConversionError(f"{raw / others[0]}: dataset id {dataset_id} is taken; choose another with -d")
    if (root / "dataset.json").is_file() and not overwrite:
        raise ConversionError(f"{root}: already converted (dataset.json exists); delete it or pass --overwrite")

    train, test = spec.find(src)
    check_count(spec, train, src, allow_partial)
    cases = [c.case_id for c in train]
    splits = None
    if split == "literature" and spec.key in LITERATURE:
        try:
            splits = literature_splits(spec.key, cases)
        except MimError as exc:
            if not allow_partial:
                raise
            log(f"no split of the literature for this partial set ({exc}); nnU-Net will make its own folds")
    if overwrite and root.exists():
        shutil.rmtree(root)
    log(f"{spec.title}: {len(train)} training and {len(test)} test cases from {src} -> {root}")
    for case in tqdm(train, desc=f"{spec.key} training cases", unit="case"):
        convert_case(spec, case, root, "Tr")
    for case in tqdm(test, desc=f"{spec.key} test images", unit="case", disable=not test):
        convert_case(spec, case, root, "Ts")
    if splits is not None:
        write_json_atomic(root / SPLITS_FILE, splits)
        log(f"{root / SPLITS_FILE}: {LITERATURE[spec.key]}; here fold 0 has {len(splits[0]['train'])} training and "
            f"{len(splits[0]['val'])} validation cases")
    write_json_atomic(root / "dataset.json", {
        "name": spec.dataset_name,
        "description": spec.title,
        "channel_names": {"0": "CT"},
        "labels": {"background": 0, **{n: i for i, n in enumerate(spec.classes, start=1)}},
        "numTraining": len(train),
        "file_ending": FILE_ENDING,
        "reference": spec.reference,
        "licence": spec.licence,
        "mim_nnunet": {"converter": spec.key, "source": str(src.resolve()), "partial": len(train) < spec.expected_count,
                       "label_values": {n: v for n, v in spec.classes.items()}},
    })
    log(f"wrote {root / 'dataset.json'}; next: nnUNetv2_plan_and_preprocess -d {dataset_id} -c 3d_fullres "
        f"--verify_dataset_integrity")
    return root

