"""The planner's choices on synthetic fingerprints, each expected value derived by hand below."""

import json
import os

import pytest

from mim_nnunet.data import planner
from mim_nnunet.data.planner import (
    STEP_MEMORY_FP32_AT_96,
    memory_target_for,
    plan_pretraining,
)


def fingerprint(median_spacing, p10, median_shape, modality="CT", channels=1):
    return {"manifest_hash": "abc", "overall": {
        "num_cases": 10, "median_spacing": median_spacing, "spacing_p10": p10, "median_shape": median_shape,
        "modalities": [modality]}, "cases": [{"channels": channels}] * 10}


def test_isotropic_ct():
    plan = plan_pretraining(fingerprint([1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [300, 512, 512]), "hybrid", "base", 24.0)
    assert plan["target_spacing"] == [1.0, 1.0, 1.0]                  # median, nothing anisotropic
    assert plan["input_size"] == [96, 96, 96]
    # 256 sub-volumes / 21 per crop = 12.2 -> 13 crops -> multiple of 4 -> 16 crops = 336 sub-volumes
    assert plan["effective_batch_subvolumes"] == 336
    assert {n * e["per_device_batch"] * e["accumulation"] for n, e in
            ((int(k), v) for k, v in plan["batch_by_device_count"].items())} == {16}
    # hybrid base, one crop in one shot: 0.5 (bf16) x (1.86 GB fixed + 0.942 GB x 21 sub-volumes + 50 kept 96^3
    # fp32 volumes (0.165 GB)) = 10.90 GB; two crops 0.5 x (1.86 + 0.942 x 42 + 0.33) = 20.9 GB fit 24 - 2 GB
    assert plan["batch_by_device_count"] == {
        "1": {"per_device_batch": 2, "accumulation": 8, "chunk": 0},
        "2": {"per_device_batch": 2, "accumulation": 4, "chunk": 0},
        "4": {"per_device_batch": 2, "accumulation": 2, "chunk": 0},
        "8": {"per_device_batch": 2, "accumulation": 1, "chunk": 0}}
    assert "measured: CPU peak RSS" in plan["explain"]["batch_by_device_count"]      # names its source
    assert plan["lr"] == pytest.approx(1e-4 * (336 / 256) ** 0.5)               # the square-root rule
    assert plan["intensity"]["CT"]["window"] == [-1000.0, 1000.0]
    assert set(plan["explain"]) >= {"target_spacing", "input_size", "batch_by_device_count", "lr", "intensity"}


def test_thick_slice_ct():
    # z spacing 5 mm vs 0.7 mm in plane (7.1x > 3) and 60 slices vs 512 (60 * 3 < 512): anisotropic, so z
    # takes the 10th percentile of the z spacings, 2.5 mm. S: 96 voxels of 0.7 mm = 67.2 mm; along z
    # 67.2 / 2.5 = 26.9 voxels -> nearest multiple of 32 (at least 32) = 32.
    plan = plan_pretraining(fingerprint([5.0, 0.7, 0.7], [2.5, 0.6, 0.6], [60, 512, 512]), "hybrid", "base", 24.0)
    assert plan["target_spacing"] == [2.5, 0.7, 0.7]
    assert plan["input_size"] == [32, 96, 96]
    # b crops of 32x96x96 (1/3 of 96^3) need 0.5 x (1.86 + (0.942 x 21 + 0.165) / 3 x b) = 0.93 + 3.32 b GB <= 22:
    # b <= 6.3; the largest divisor of 16 <= 6 is 4
    assert plan["batch_by_device_count"]["1"] == {"per_device_batch": 4, "accumulation": 4, "chunk": 0}
    # a 10th percentile finer than the in-plane spacing is raised just above it
    plan = plan_pretraining(fingerprint([5.0, 0.7, 0.7], [0.5, 0.6, 0.6], [60, 512, 512]))
    assert plan["target_spacing"][0] == pytest.approx(0.70001)


def test_mri_and_memory_pressure():
    # 1.5 mm z over 1.0 mm: ratio 1.5 <= 3, median kept; S along z = 96 * 1.0 / 1.5 = 64
    plan = plan_pretraining(fingerprint([1.5, 1.0, 1.0], [1.2, 1.0, 1.0], [120, 256, 256], "MRI", channels=4),
                            "hybrid", "base", 8.0)
    assert plan["target_spacing"] == [1.5, 1.0, 1.0] and plan["input_size"] == [64, 96, 96]
    assert plan["in_channels"] == 4 and plan["intensity"] == {"MRI": {"scheme": "zscore",
                                                                   "background": "the normalised value of 0 per case"}}
    # 64x96x96 = 2/3 of 96^3 -> 0.5 x (1.86 + 2/3 x (0.942 x 21 + 0.165)) = 7.58 GB per crop in one shot > 8 - 2 GB:
    # one crop, chunked; a chunk of c needs 0.5 x (1.86 + 2/3 x (0.942 c + 0.165)) GB <= 6 -> c <= 15.97 -> 15
    assert plan["batch_by_device_count"]["1"] == {"per_device_batch": 1, "accumulation": 16, "chunk": 15}
    assert "WARNING" not in plan["explain"]["batch_by_device_count"]
    # a 3.4 GB target leaves 1.4 GB: chunk 1 (0.5 x (1.86 + 2/3 x (0.942 + 0.165)) = 1.30 GB) fits, chunk 2
    # (1.61 GB) does not; 3.2 GB leaves 1.2 GB: not even chunk 1 fits, a warning
    plan = plan_pretraining(fingerprint([1.5, 1.0, 1.0], [1.2, 1.0, 1.0], [120, 256, 256], "MRI", channels=4),
                            "hybrid", "base", 3.4)
    assert plan["batch_by_device_count"]["1"]["chunk"] == 1
    assert "WARNING" not in plan["explain"]["batch_by_device_count"]
    plan = plan_pretraining(fingerprint([1.5, 1.0, 1.0], [1.2, 1.0, 1.0], [120, 256, 256], "MRI", channels=4),
                            "hybrid", "base", 3.2)
    assert plan["batch_by_device_count"]["1"]["chunk"] == 1 and "WARNING" in plan["explain"]["batch_by_device_count"]
    assert "--checkpointing" in plan["explain"]["batch_by_device_count"]       # the way out it names


def modelled_gb(entry, voxels, live, crops=1):
    """The memory model written out: bf16 half of fixed + per sub-volume (scaled by voxels) + kept volumes."""
    kept = (8 + 2 * 21) * voxels * 4 / 2 ** 30
    return 0.5 * (entry["fixed_gb"] + entry["per_subvolume_gb"] * voxels / 96 ** 3 * live + kept * crops)


@pytest.mark.parametrize("backbone, size", [("hybrid", "base"), ("swin", "base"), ("hybrid", "tiny")])
def test_chunk_and_batch_fit_the_memory_target(backbone, size):
    """Smaller targets give smaller chunks; each pick fits, and the next chunk (or batch) would not."""
    entry = STEP_MEMORY_FP32_AT_96[(backbone, size)]
    fp = fingerprint([1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [300, 512, 512])
    chunks = []
    for target in (4.0, 6.0, 10.0, 14.0):
        plan = plan_pretraining(fp, backbone, size, target)
        split = plan["batch_by_device_count"]["1"]
        assert entry["source"] in plan["explain"]["batch_by_device_count"]       # the plan names its source
        available = target - 2.0
        batch, chunk = split["per_device_batch"], split["chunk"]
        live = 21 * batch if chunk == 0 else min(chunk, 16 * batch)
        assert modelled_gb(entry, 96 ** 3, live, batch) <= available
        if chunk:                               # chunks only when one crop does not fit in one shot
            assert batch == 1 and modelled_gb(entry, 96 ** 3, 21) > available
            assert chunk == 16 or modelled_gb(entry, 96 ** 3, chunk + 1) > available
        chunks.append(chunk or 21 * batch)
    assert chunks == sorted(chunks) and chunks[0] < chunks[-1]


def test_hybrid_base_chunks_by_hand():
    # 96^3, one crop: a chunk of c needs 0.5 x (1.86 + 0.942 c + 0.165) GB; 8 GB - 2: c <= 10.6 -> 10;
    # 5 GB - 2: c <= 4.2 -> 4
    fp = fingerprint([1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [300, 512, 512])
    assert plan_pretraining(fp, "hybrid", "base", 8.0)["batch_by_device_count"]["1"] == \
        {"per_device_batch": 1, "accumulation": 16, "chunk": 10}
    assert plan_pretraining(fp, "hybrid", "base", 5.0)["batch_by_device_count"]["4"] == \
        {"per_device_batch": 1, "accumulation": 4, "chunk": 4}


def test_planning_is_deterministic():
    fp = fingerprint([0.8, 0.78, 0.78], [0.7, 0.7, 0.7], [200, 512, 512])
    assert json.dumps(plan_pretraining(fp, "swin", "tiny")) == json.dumps(plan_pretraining(fp, "swin", "tiny"))


def test_on_the_cpu_the_memory_target_comes_from_the_ram(monkeypatch):
    monkeypatch.setattr(planner, "available_memory_gb", lambda: 20.0)
    # 20 GB x 0.75 / 2 processes / 2 (fp32 vs the table's bf16) = 3.75 GB -> power of two below: 2 GB
    target = memory_target_for("cpu", processes=2)
    assert target == 2.0 and "20.0 GB RAM available x 0.75 / 2 process(es) / 2" in target.why
    assert memory_target_for("cpu", processes=1) == 4.0                 # 7.5 -> 4
    assert memory_target_for("cuda") == 24.0 and memory_target_for("cpu", given=10.0) == 10.0
    plan = plan_pretraining(fingerprint([1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [300, 512, 512]), "hybrid", "tiny", target)
    # the 2 GB target less the 2 GB reserve leaves nothing: one crop per device in the smallest chunk (1 sub-volume),
    # 16 crops by accumulation, and the plan warns
    assert plan["gpu_memory_target_gb"] == 2.0 and type(plan["gpu_memory_target_gb"]) is float
    assert plan["batch_by_device_count"]["1"] == {"per_device_batch": 1, "accumulation": 16, "chunk": 1}
    assert "WARNING" in plan["explain"]["batch_by_device_count"]
    assert plan["explain"]["gpu_memory_target_gb"] == target.why
    json.dumps(plan)
    monkeypatch.setattr(planner, "available_memory_gb", lambda: None)
    assert memory_target_for("cpu") == 24.0 and "could not be read" in memory_target_for("cpu").why


def test_available_memory_is_read_from_the_system():
    available = planner.available_memory_gb()
    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 1e9
    assert 0 < available <= total


def test_every_backbone_and_size_has_a_memory_entry_naming_its_source():
    from mim_nnunet.backbones import BACKBONES, size_table
    for backbone in BACKBONES:
        for size in size_table(backbone):
            entry = STEP_MEMORY_FP32_AT_96[(backbone, size)]
            assert entry["source"].startswith(("measured", "estimate", "as ")) and entry["per_subvolume_gb"] > 0
