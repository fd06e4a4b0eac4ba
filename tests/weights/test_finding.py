"""Where a MiM trainer finds its export: the plans, then the environment, then the newest export."""

import json
import os

import pytest

from helpers.exports import hybrid_export
from mim_nnunet.weights.finding import (
    PLANS_KEY,
    WEIGHTS_ENV,
    WeightsNotFound,
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
