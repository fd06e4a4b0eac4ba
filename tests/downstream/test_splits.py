"""Splits: the literature's (BTCV 24/6, MM-WHS folds), nnU-Net's 5 folds, seeded nested label fractions, and the
files nnU-Net reads."""

import json
import subprocess

import pytest

from helpers.commands import command
from mim_nnunet.downstream.splits import (
    RECORD_FILE,
    SplitError,
    build_splits,
    fraction_splits,
    literature_splits,
    nnunet_splits,
    write_splits,
)

BTCV_CASES = [f"BTCV_{n:04d}" for n in [*range(1, 11), *range(21, 41)]]
MMWHS_CASES = [f"MMWHS_{n}" for n in range(1001, 1021)]


def test_btcv_literature_split_is_the_swinunetr_24_6_split():
    (split,) = literature_splits("btcv", BTCV_CASES)
    # written out by hand from the MONAI/SwinUNETR dataset_0.json: validation = img0035 ... img0040
    assert split["val"] == ["BTCV_0035", "BTCV_0036", "BTCV_0037", "BTCV_0038", "BTCV_0039", "BTCV_0040"]
    assert split["train"] == [f"BTCV_{n:04d}" for n in (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 21, 22, 23, 24, 25, 26, 27,
                                                          28, 29, 30, 31, 32, 33, 34)]


def test_mmwhs_literature_folds_are_four_consecutive_cases():
    folds = literature_splits("mmwhs_ct", MMWHS_CASES)
    assert [f["val"] for f in folds] == [[f"MMWHS_{n}" for n in range(1001 + 4 * k, 1005 + 4 * k)] for k in range(5)]
    for f in folds:
        assert sorted(f["train"] + f["val"]) == MMWHS_CASES and not set(f["train"]) & set(f["val"])


def test_literature_split_of_a_partial_set_and_unknown_datasets():
    (split,) = literature_splits("btcv", ["BTCV_0001", "BTCV_0002", "BTCV_0035"])
    assert split == {"train": ["BTCV_0001", "BTCV_0002"], "val": ["BTCV_0035"]}
    with pytest.raises(SplitError, match="0 validation cases"):
        literature_splits("btcv", ["BTCV_0001", "BTCV_0002"])
    with pytest.raises(SplitError, match="flare22: no split of the literature is known"):
        literature_splits("flare22", ["FLARE22_Tr_0001"])


def test_nnunet_splits_are_nnunets_own_kfold():
    from sklearn.model_selection import (
        KFold,  # what nnU-Net 2.8 uses: KFold(5, shuffle, random_state=12345)
    )
    cases = [f"case_{i:02d}" for i in range(12)]
    expected = [{"train": [cases[i] for i in tr], "val": [cases[i] for i in va]}
                for tr, va in KFold(n_splits=5, shuffle=True, random_state=12345).split(cases)]
    assert nnunet_splits(list(reversed(cases))) == expected        # sorted first, as nnU-Net does
    with pytest.raises(SplitError, match="fewer than nnU-Net's 5 folds"):
        nnunet_splits(cases[:4])


def test_fractions_are_nested_seeded_subsets_with_a_fixed_validation():
    train = BTCV_CASES[:24]
    val = BTCV_CASES[24:]
    splits = fraction_splits(train, (0.25, 0.5, 1.0), seed=7, val=val)
    assert [len(s["train"]) for s in splits] == [6, 12, 24]
    assert set(splits[0]["train"]) <= set(splits[1]["train"]) <= set(splits[2]["train"]) == set(train)
    assert all(s["val"] == val for s in splits)
    assert splits == fraction_splits(train, (0.25, 0.5, 1.0), seed=7, val=val)
    assert splits[0]["train"] != fraction_splits(train, (0.25,), seed=8, val=val)[0]["train"]
    # seed None: the first cases, as the MiM release's BTCV_semi_6.json (img0001-0006) and BTCV_semi_12.json
    # (img0001-0010, img0021, img0022)
    first = fraction_splits(train, (0.25, 0.5), seed=None, val=val)
    assert first[0]["train"] == [f"BTCV_{n:04d}" for n in range(1, 7)]
    assert first[1]["train"] == [f"BTCV_{n:04d}" for n in (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 21, 22)]
    with pytest.raises(SplitError, match="must be in"):
        fraction_splits(train, (0.0,))


def test_build_splits_appends_fraction_folds_after_the_base_folds():
    splits, record = build_splits(BTCV_CASES, "literature", "btcv", fractions=(0.25, 0.5, 1.0), seed=0)
    assert len(splits) == 3 and record["base_folds"] == 1
    assert record["fraction_folds"] == {"0.25": 1, "0.5": 2, "1.0": 0}
    for fold in (1, 2):
        assert splits[fold]["val"] == splits[0]["val"]
        assert set(splits[fold]["train"]) < set(splits[0]["train"])
    assert [len(splits[f]["train"]) for f in (1, 2)] == [6, 12]
    splits, record = build_splits(MMWHS_CASES, "nnunet", "mmwhs_ct", fractions=(0.5,))
    assert len(splits) == 6 and record["fraction_folds"] == {"0.5": 5}
    assert len(splits[5]["train"]) == 8 and splits[5]["val"] == splits[0]["val"]


def _raw_dataset(raw, name, cases, converter):
    root = raw / name
    (root / "labelsTr").mkdir(parents=True)
    for c in cases:
        (root / "labelsTr" / f"{c}.nii.gz").write_bytes(b"")
    meta = {"labels": {"background": 0, "x": 1}, "file_ending": ".nii.gz", "channel_names": {"0": "CT"},
            "numTraining": len(cases)}
    if converter:
        meta["mim_nnunet"] = {"converter": converter}
    (root / "dataset.json").write_text(json.dumps(meta), encoding="utf-8")
    return root


def test_write_splits_keeps_raw_and_preprocessed_consistent(nnunet_dirs):
    raw, pre = nnunet_dirs["nnUNet_raw"], nnunet_dirs["nnUNet_preprocessed"]
    _raw_dataset(raw, "Dataset501_BTCV", BTCV_CASES, "btcv")
    record = write_splits("Dataset501_BTCV", "literature", fractions=(0.25, 1.0), seed=3, log=lambda *_: None)
    written = json.loads((pre / "Dataset501_BTCV" / "splits_final.json").read_text(encoding="utf-8"))
    raw_copy = json.loads((raw / "Dataset501_BTCV" / "splits_final.json").read_text(encoding="utf-8"))
    assert raw_copy == written[:1] and len(written) == 2
    assert written[1] == fraction_splits(written[0]["train"], (0.25,), seed=3, val=written[0]["val"])[0]
    assert json.loads((pre / "Dataset501_BTCV" / RECORD_FILE).read_text(encoding="utf-8")) == record
    _raw_dataset(raw, "Dataset600_Other", [f"c{i}" for i in range(6)], None)
    with pytest.raises(SplitError, match="not written by 'mim_nnunet convert'"):
        write_splits("Dataset600_Other", "literature", log=lambda *_: None)


def test_splits_command_reports_one_line_errors(nnunet_dirs, tmp_path):
    _raw_dataset(nnunet_dirs["nnUNet_raw"], "Dataset600_Other", [f"c{i}" for i in range(3)], None)
    result = subprocess.run([command("mim_nnunet"), "splits", "-d", "Dataset600_Other", "-split", "nnunet"],
                            capture_output=True, encoding="utf-8", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == "mim_nnunet: error: 3 cases are fewer than nnU-Net's 5 folds"
