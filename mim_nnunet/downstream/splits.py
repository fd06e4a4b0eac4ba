"""Train/validation splits for nnU-Net's ``splits_final.json``: the splits of the literature, nnU-Net's own 5
folds, and the paper's label fractions (Table 5) as extra folds.

``splits_final.json`` is a list of folds ``[{"train": [case, ...], "val": [case, ...]}, ...]`` of case
identifiers; ``nnUNetv2_train ID CONFIG FOLD`` reads it from ``$nnUNet_preprocessed/DatasetXXX_Name/``, and
``nnUNetv2_plan_and_preprocess`` copies ``$nnUNet_raw/DatasetXXX_Name/splits_final.json`` there when it exists
(checking that the folds the raw copy lists are unchanged). The layout written here keeps both consistent:
the raw copy holds the base folds, the preprocessed one the base folds followed by one fold per label
fraction, and ``splits_final_mim.json`` beside it says what each fold is.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from ..common.atomic import write_json_atomic
from ..common.environment import require_nnunet_paths
from ..common.errors import MimError

SPLITS_FILE = "splits_final.json"
RECORD_FILE = "splits_final_mim.json"
SCHEMES = ("literature", "nnunet")
# nnU-Net 2.8's own split: sklearn KFold(5, shuffle=True, random_state=12345) over the sorted case ids
# (nnUNetTrainer.do_split -> nnunetv2.utilities.crossval_split.generate_crossval_split).
NNUNET_SPLIT_SEED, NNUNET_FOLDS = 12345, 5

# BTCV 24 training / 6 validation cases, the split of SwinUNETR and MONAI's BTCV tutorials (the
# swin_unetr_btcv_dataset_0.json linked from Project-MONAI/research-contributions SwinUNETR/BTCV/README.md:
# "training" img0001-0010 + img0021-0034, "validation" img0035-0040), which the MiM release uses unchanged
# (github.com/JiaxinZhuang/MiM, Finetune/jsons/btcv.json; fold 0 of Finetune/jsons/BTCV_folds.json).
BTCV_VALIDATION = tuple(range(35, 41))
# MM-WHS CT: five folds of four consecutive cases, fold k validates ct_train_{1001+4k}..{1004+4k}
# (MiM release, Finetune/jsons/MMWHS_ct.json "fold" fields).
MMWHS_FIRST, MMWHS_FOLD_SIZE, MMWHS_FOLDS = 1001, 4, 5
LITERATURE = {
    "btcv": "24 training / 6 validation cases (img0035-img0040 validate), the SwinUNETR/MONAI split the MiM "
            "paper follows",
    "mmwhs_ct": "5 folds of 4 consecutive cases (fold k validates ct_train_1001+4k..1004+4k), the MiM release's folds",
}


class SplitError(MimError):
    pass


def _number(case: str) -> int:
    found = re.search(r"(\d+)$", case)
    if not found:
        raise SplitError(f"case '{case}': no case number at the end of its name")
    return int(found.group(1))


def literature_splits(dataset_key: str, cases: Sequence[str]) -> List[Dict[str, List[str]]]:
    """The published split of a converted dataset (``LITERATURE``), restricted to the ``cases`` present."""
    cases = sorted(cases)
    if dataset_key == "btcv":
        val = [c for c in cases if _number(c) in BTCV_VALIDATION]
        folds = [val]
    elif dataset_key == "mmwhs_ct":
        folds = [[c for c in cases if (_number(c) - MMWHS_FIRST) // MMWHS_FOLD_SIZE == k] for k in range(MMWHS_FOLDS)]
    else:
        raise SplitError(f"{dataset_key}: no split of the literature is known (known: {', '.join(LITERATURE)}); "
                         f"use nnU-Net's 5 folds (-split nnunet)")
    splits = []
    for k, val in enumerate(folds):
        train = [c for c in cases if c not in val]
        if not val or not train:
            raise SplitError(f"{dataset_key} fold {k} of the literature split has {len(train)} training and "
                             f"{len(val)} validation cases among the {len(cases)} present")
        splits.append({"train": train, "val": val})
    return splits


def nnunet_splits(cases: Sequence[str]) -> List[Dict[str, List[str]]]:
    """The 5 folds nnU-Net 2.8 creates itself when no ``splits_final.json`` exists."""
    from nnunetv2.utilities.crossval_split import generate_crossval_split
    if len(cases) < NNUNET_FOLDS:
        raise SplitError(f"{len(cases)} cases are fewer than nnU-Net's {NNUNET_FOLDS} folds")
    return [{"train": [str(c) for c in s["train"]], "val": [str(c) for c in s["val"]]}
            for s in generate_crossval_split(sorted(cases), seed=NNUNET_SPLIT_SEED, n_splits=NNUNET_FOLDS)]


def fraction_splits(cases: Sequence[str], fractions: Sequence[float], seed: Optional[int] = 0,
                    val: Optional[Sequence[str]] = None) -> List[Dict[str, List[str]]]:
    """One split per fraction: ``ceil(f * n)`` of the ``n`` training ``cases`` (at least 1), nested (a smaller
    fraction's cases are in every larger one).

    ``seed``: the order the cases are drawn in is a seeded permutation; ``None`` takes them in the given order
    (the MiM release's subsets are the first cases: BTCV_semi_6/12.json, MMWHS_ct_4/8.json).
    ``val``: every split validates on these cases; ``None`` validates on the cases not drawn, or on the first
    training case when none is left (nnU-Net needs one).
    """
    for f in fractions:
        if not 0 < float(f) <= 1:
            raise SplitError(f"label fraction {f}: must be in (0, 1]")
    import numpy as np
    cases = list(cases)
    order = cases if seed is None else [cases[i] for i in np.random.default_rng(seed).permutation(len(cases))]
    splits = []
    for f in fractions:
        k = max(1, math.ceil(float(f) * len(order)))
        train = sorted(order[:k])
        rest = sorted(val) if val is not None else (sorted(order[k:]) or [order[0]])
        splits.append({"train": train, "val": rest})
    return splits


def build_splits(cases: Sequence[str], scheme: str, dataset_key: Optional[str] = None,
                 fractions: Sequence[float] = (), seed: Optional[int] = 0) -> Tuple[List[Dict], Dict]:
    """Base folds of ``scheme`` followed by one fold per label fraction below 1 (drawn from fold 0's training
    cases, validated on fold 0's validation cases); fraction 1 is fold 0 itself.

    Returns ``(splits, record)``; ``record["fraction_folds"]`` maps each fraction (as a string) to its fold.
    """
    if scheme not in SCHEMES:
        raise SplitError(f"split scheme '{scheme}': expected one of {', '.join(SCHEMES)}")
    base = literature_splits(dataset_key or "", cases) if scheme == "literature" else nnunet_splits(cases)
    splits = [dict(s) for s in base]
    folds = [{"fold": i, "kind": scheme, "train": len(s["train"]), "val": len(s["val"])} for i, s in enumerate(base)]
    fraction_folds = {}
    below_one = [f for f in fractions if float(f) < 1]
    for f, s in zip(below_one, fraction_splits(base[0]["train"], below_one, seed, val=base[0]["val"])):
        splits.append(s)
        folds.append({"fold": len(splits) - 1, "kind": "fraction", "fraction": float(f), "seed": seed,
                      "of_fold": 0, "train": len(s["train"]), "val": len(s["val"])})
        fraction_folds[str(float(f))] = len(splits) - 1
    if any(float(f) == 1 for f in fractions):
        fraction_folds["1.0"] = 0
    description = LITERATURE.get(dataset_key or "", "") if scheme == "literature" else \
        f"nnU-Net's 5 folds (KFold, seed {NNUNET_SPLIT_SEED})"
    record = {"scheme": scheme, "dataset": dataset_key, "description": description, "base_folds": len(base),
              "fraction_folds": fraction_folds, "seed": seed, "folds": folds}
    return splits, record


def dataset_folders(dataset: str) -> Tuple[str, Path, Path]:
    """(name, raw folder, preprocessed folder) of an nnU-Net dataset id or name."""
    from nnunetv2.utilities.dataset_name_id_conversion import (
        maybe_convert_to_dataset_name,
    )
    paths = require_nnunet_paths(("nnUNet_raw", "nnUNet_preprocessed"))
    try:
        name = maybe_convert_to_dataset_name(dataset)
    except RuntimeError:
        raise SplitError(f"dataset {dataset}: not found in nnUNet_raw or nnUNet_preprocessed") from None
    return name, Path(paths["nnUNet_raw"]) / name, Path(paths["nnUNet_preprocessed"]) / name


def raw_cases(raw: Path) -> Tuple[List[str], Dict]:
    """Case identifiers (from ``labelsTr``) and ``dataset.json`` of a raw dataset folder."""
    meta_file = raw / "dataset.json"
    if not meta_file.is_file():
        raise SplitError(f"{meta_file}: not found")
    meta = json.loads(meta_file.read_text(encoding="utf-8"))
    ending = meta.get("file_ending", ".nii.gz")
    cases = sorted(p.name[:-len(ending)] for p in (raw / "labelsTr").glob(f"*{ending}"))
    if not cases:
        raise SplitError(f"{raw / 'labelsTr'}: no *{ending} label files")
    return cases, meta


def write_splits(dataset: str, scheme: str, fractions: Sequence[float] = (), seed: Optional[int] = 0,
                 log=print) -> Dict:
    """Write ``splits_final.json`` (base folds + fraction folds) and ``splits_final_mim.json`` into the
    preprocessed folder and the base folds into the raw folder; return the record."""
    name, raw, pre = dataset_folders(dataset)
    cases, meta = raw_cases(raw)
    key = (meta.get("mim_nnunet") or {}).get("converter")
    if scheme == "literature" and key is None:
        raise SplitError(f"{raw / 'dataset.json'}: not written by 'mim_nnunet convert', so no split of the literature "
                         f"is known for {name}; use -split nnunet")
    splits, record = build_splits(cases, scheme, key, fractions, seed)
    base = splits[:record["base_folds"]]
    write_json_atomic(raw / SPLITS_FILE, base)
    write_json_atomic(pre / SPLITS_FILE, splits)
    write_json_atomic(pre / RECORD_FILE, record)
    for fold in record["folds"]:
        what = f"{fold['fraction']:g} of fold {fold['of_fold']}'s training cases" if fold["kind"] == "fraction" \
            else f"{fold['kind']} fold"
        log(f"fold {fold['fold']}: {fold['train']} training / {fold['val']} validation cases ({what})")
    log(f"wrote {pre / SPLITS_FILE} ({record['description']}) and {os.path.basename(RECORD_FILE)}")
    return record
