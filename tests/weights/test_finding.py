"""Where a MiM trainer finds its export: the plans, then the environment, then the newest export."""

import json
import os

import pytest

from helpers.exports import MRI_RECORD, hybrid_export
from mim_nnunet.weights.finding import (
    PLANS_KEY,
    WEIGHTS_ENV,
    WeightsNotFound,
    dataset_modality,
    find_weights,
)


def test_weights_are_found_in_plans_then_environment_then_results(tmp_path, monkeypatch):
    results = tmp_path / "results"
    old = hybrid_export(results / "MiM_a" / "hybrid_tiny" / "export", "mim_hybrid_tiny")
    new = hybrid_export(results / "MiM_b" / "hybrid_tiny" / "export", "mim_hybrid_tiny")
    os.utime(old, (1, 1))
    hybrid_export(results / "MiM_c" / "hybrid_base" / "export", "mim_hybrid_base", size="base")
    monkeypatch.setenv("nnUNet_results", str(results))
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    assert find_weights({}, "hybrid", "tiny", "T")[0] == new                  # newest of the right size
    monkeypatch.setenv(WEIGHTS_ENV, str(old))
    assert find_weights({}, "hybrid", "tiny", "T") == (old, f"${WEIGHTS_ENV}")
    assert find_weights({PLANS_KEY: {"hybrid": str(new)}}, "hybrid", "tiny", "T")[0] == new
    with pytest.raises(WeightsNotFound, match="names .*missing.safetensors, which does not exist"):
        find_weights({PLANS_KEY: {"hybrid": str(tmp_path / "missing.safetensors")}}, "hybrid", "tiny", "T")
    monkeypatch.delenv(WEIGHTS_ENV)
    with pytest.raises(WeightsNotFound, match="mim_pretrain -d DATA -backbone swin -size tiny.*nnUNetTrainerSwinUNETR"):
        find_weights({}, "swin", "tiny", "T")


def test_set_weights_records_the_export_in_the_plans(tmp_path):
    from mim_nnunet.weights.finding import set_plans_weights
    plans = tmp_path / "nnUNetPlans.json"
    plans.write_text(json.dumps({"dataset_name": "D", "configurations": {}}))
    export = hybrid_export(tmp_path)
    set_plans_weights(plans, "hybrid", export, log=lambda *_: None)
    written = json.loads(plans.read_text(encoding="utf-8"))
    assert written["dataset_name"] == "D" and written[PLANS_KEY] == {"hybrid": str(export.resolve())}
    assert find_weights(written, "hybrid", "tiny", "T") == (export.resolve(), f"the plans' {PLANS_KEY}['hybrid']")


def test_the_automatic_choice_prefers_the_datasets_modality_and_says_what_it_chose(tmp_path, monkeypatch):
    results = tmp_path / "results"
    ct_old = hybrid_export(results / "MiM_a" / "hybrid_tiny" / "export", "mim_hybrid_tiny")
    ct_new = hybrid_export(results / "MiM_b" / "hybrid_tiny" / "export", "mim_hybrid_tiny")
    mri = hybrid_export(results / "MiM_c" / "hybrid_tiny" / "export", "mim_hybrid_tiny", normalisation=MRI_RECORD)
    for age, path in enumerate((ct_old, ct_new, mri), start=1):      # written in this order
        os.utime(path, (age, age))
    monkeypatch.setenv("nnUNet_results", str(results))
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    path, how = find_weights({}, "hybrid", "tiny", "T", modality="CT")
    assert path == ct_new                                                # not the newest (MRI) export
    assert "pre-trained on CT (the dataset's modality)" in how
    assert "chosen from 3 candidates (2 other(s)); pick another with `mim_nnunet set-weights -d DATASET FILE` " \
           f"or ${WEIGHTS_ENV}=FILE" in how
    assert find_weights({}, "hybrid", "tiny", "T", modality="MRI")[0] == mri
    assert find_weights({}, "hybrid", "tiny", "T")[0] == mri             # modality unknown: the newest
    mri.unlink()
    mri.with_suffix(".json").unlink()
    path, how = find_weights({}, "hybrid", "tiny", "T", modality="MRI")  # none of MRI: the newest, said
    assert path == ct_new and "none was pre-trained on MRI, the dataset's modality; this one on CT" in how
    ct_old.with_suffix(".json").unlink()                                 # one candidate: nothing to choose between
    assert "candidates" not in find_weights({}, "hybrid", "tiny", "T", modality="CT")[1]


def test_the_datasets_modality_is_channel_0_of_dataset_json():
    assert dataset_modality({"channel_names": {"0": "CT"}}) == "CT"
    assert dataset_modality({"channel_names": {"0": "ct", "1": "T1"}}) == "CT"
    assert dataset_modality({"channel_names": {"0": "T2", "1": "CT"}}) == "MRI"
    assert dataset_modality({"modality": {"0": "FLAIR"}}) == "MRI"          # nnU-Net v1's key
    assert dataset_modality({"labels": {}}) is None
