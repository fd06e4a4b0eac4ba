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
    # hybrid base, one crop in one shot: fp32 state (16 B x 90.1 M parameters = 1.34 GB) and runtime make up the
    # measured fixed 1.86 GB, untouched by autocast; + 0.65 (autocast) x 0.942 GB x 21 sub-volumes + 50 kept
    # 96^3 fp32 volumes (0.165 GB) = 14.88 GB; two crops 1.86 + 0.65 x 0.942 x 42 + 0.33 = 27.9 GB > 24 - 2 GB
    assert plan["batch_by_device_count"] == {
        "1": {"per_device_batch": 1, "accumulation": 16, "chunk": 0},
        "2": {"per_device_batch": 1, "accumulation": 8, "chunk": 0},
        "4": {"per_device_batch": 1, "accumulation": 4, "chunk": 0},
        "8": {"per_device_batch": 1, "accumulation": 2, "chunk": 0}}
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
    # b crops of 32x96x96 (1/3 of 96^3) need 1.86 + (0.65 x 0.942 x 21 + 0.165) / 3 x b = 1.86 + 4.341 b GB <= 22:
    # b <= 4.6; the largest divisor of 16 <= 4 is 4
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
    # 64x96x96 = 2/3 of 96^3 -> 1.86 + 2/3 x (0.65 x 0.942 x 21 + 0.165) = 10.54 GB per crop in one shot > 8 - 2 GB:
    # one crop, chunked; a chunk of c needs 1.86 + 2/3 x (0.65 x 0.942 c + 0.165) GB <= 6 -> c <= 9.87 -> 9
    assert plan["batch_by_device_count"]["1"] == {"per_device_batch": 1, "accumulation": 16, "chunk": 9}
    assert "WARNING" not in plan["explain"]["batch_by_device_count"]
    # a 4.4 GB target leaves 2.4 GB: chunk 1 (1.86 + 2/3 x (0.65 x 0.942 + 0.165) = 2.378 GB) fits, chunk 2
    # (2.786 GB) does not; 4.3 GB leaves 2.3 GB: not even chunk 1 fits, a warning
    plan = plan_pretraining(fingerprint([1.5, 1.0, 1.0], [1.2, 1.0, 1.0], [120, 256, 256], "MRI", channels=4),
                            "hybrid", "base", 4.4)
    assert plan["batch_by_device_count"]["1"]["chunk"] == 1
    assert "WARNING" not in plan["explain"]["batch_by_device_count"]
    plan = plan_pretraining(fingerprint([1.5, 1.0, 1.0], [1.2, 1.0, 1.0], [120, 256, 256], "MRI", channels=4),
                            "hybrid", "base", 4.3)
    assert plan["batch_by_device_count"]["1"]["chunk"] == 1 and "WARNING" in plan["explain"]["batch_by_device_count"]
    assert "--checkpointing" in plan["explain"]["batch_by_device_count"]       # the way out it names


def modelled_gb(entry, voxels, live, crops=1, fraction=0.65):
    """The memory model written out: the measured fixed part (fp32 state and runtime; autocast shrinks
    neither) + activations per sub-volume (scaled by voxels) x the autocast fraction + kept fp32 volumes."""
    kept = (8 + 2 * 21) * voxels * 4 / 2 ** 30
    return entry["fixed_gb"] + fraction * entry["per_subvolume_gb"] * voxels / 96 ** 3 * live + kept * crops


@pytest.mark.parametrize("backbone, size", [("hybrid", "base"), ("swin", "base"), ("hybrid", "tiny")])
def test_chunk_and_batch_fit_the_memory_target(backbone, size):
    """Smaller targets give smaller chunks; each pick fits, and the next chunk (or batch) would not."""
    entry = STEP_MEMORY_FP32_AT_96[(backbone, size)]
    fp = fingerprint([1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [300, 512, 512])
    chunks = []
    for target in (6.0, 8.0, 12.0, 16.0):
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
    # 96^3, one crop: a chunk of c needs 1.86 + 0.65 x 0.942 c + 0.165 GB; 8 GB - 2: c <= 6.49 -> 6;
    # 5 GB - 2: c <= 1.59 -> 1
    fp = fingerprint([1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [300, 512, 512])
    assert plan_pretraining(fp, "hybrid", "base", 8.0)["batch_by_device_count"]["1"] == \
        {"per_device_batch": 1, "accumulation": 16, "chunk": 6}
    assert plan_pretraining(fp, "hybrid", "base", 5.0)["batch_by_device_count"]["4"] == \
        {"per_device_batch": 1, "accumulation": 4, "chunk": 1}


def test_planning_is_deterministic():
    fp = fingerprint([0.8, 0.78, 0.78], [0.7, 0.7, 0.7], [200, 512, 512])
    assert json.dumps(plan_pretraining(fp, "swin", "tiny")) == json.dumps(plan_pretraining(fp, "swin", "tiny"))


def test_on_the_cpu_the_memory_target_comes_from_the_ram(monkeypatch):
    monkeypatch.setattr(planner, "available_memory_gb", lambda: 10.0)
    # 10 GB x 0.75 / 2 processes = 3.75 GB -> power of two below: 2 GB
    target = memory_target_for("cpu", processes=2)
    assert target == 2.0 and "10.0 GB RAM available x 0.75 / 2 process(es) = 3.75 GB" in target.why
    assert memory_target_for("cpu", processes=1) == 4.0                 # 7.5 -> 4
    assert memory_target_for("cpu", given=10.0) == 10.0
    fp = fingerprint([1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [300, 512, 512])
    plan = plan_pretraining(fp, "hybrid", "tiny", target)
    # the 2 GB target less the 2 GB reserve leaves nothing: one crop per device in the smallest chunk (1 sub-volume),
    # 16 crops by accumulation, and the plan warns
    assert plan["gpu_memory_target_gb"] == 2.0 and type(plan["gpu_memory_target_gb"]) is float
    assert plan["batch_by_device_count"]["1"] == {"per_device_batch": 1, "accumulation": 16, "chunk": 1}
    assert "WARNING" in plan["explain"]["batch_by_device_count"]
    assert plan["explain"]["gpu_memory_target_gb"] == target.why
    json.dumps(plan)
    # the CPU's steps are fp32: 4 GB - 2 leaves 2 GB for 1.19 + 0.165 + 0.251 c (no autocast) -> c = 2 (at the
    # GPU's 0.65 autocast fraction it would be 3)
    cpu = plan_pretraining(fp, "hybrid", "tiny", memory_target_for("cpu", processes=1))
    assert cpu["batch_by_device_count"]["1"]["chunk"] == 2 and "fp32 (CPU)" in cpu["explain"]["batch_by_device_count"]
    assert plan_pretraining(fp, "hybrid", "tiny", 4.0)["batch_by_device_count"]["1"]["chunk"] == 3
    monkeypatch.setattr(planner, "available_memory_gb", lambda: None)
    assert memory_target_for("cpu") == 24.0 and "could not be read" in memory_target_for("cpu").why


def test_on_a_gpu_the_memory_target_is_the_cards_free_memory_less_headroom(monkeypatch):
    asked = []
    monkeypatch.setattr(planner, "free_gpu_memory_gb", lambda devices: asked.append(devices) or 79.3)
    # an 80 GB card with 79.3 GB free: x 0.9 = 71.4 -> a multiple of 2 GB below: 70 GB (not the fixed 24 GB)
    target = memory_target_for("cuda", processes=4)
    assert target == 70.0 and asked == [4] and "79.3 GB free" in target.why and "10% headroom" in target.why
    monkeypatch.setattr(planner, "free_gpu_memory_gb", lambda devices: 23.4)       # a 24 GB card: 21.06 -> 20
    assert memory_target_for("cuda") == 20.0
    monkeypatch.setattr(planner, "free_gpu_memory_gb", lambda devices: None)       # unreadable: the stated default
    assert memory_target_for("cuda") == 24.0 and "could not be read" in memory_target_for("cuda").why
    # an 80 GB card's target gives hybrid base more crops per device than the 24 GB default: (68 - 1.86) /
    # (0.65 x 0.942 x 21 + 0.165) = 5.1 -> 4 (divides 16), against 1 at 24 GB
    fp = fingerprint([1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [300, 512, 512])
    assert plan_pretraining(fp, "hybrid", "base", 70.0)["batch_by_device_count"]["1"]["per_device_batch"] == 4
    # a card whose free memory cannot be read on this host: the helper answers None instead of raising
    free = planner.free_gpu_memory_gb(1)
    assert free is None or free > 0


def test_the_memory_model_keeps_fp32_state_activations_and_kept_volumes_apart():
    from mim_nnunet.backbones import backbone_sizes
    from mim_nnunet.mim.config import MIM_SWITCHES, MiMConfig, align_dim_for
    from mim_nnunet.mim.model import build_mim

    # the parameter count, counted on a model built for real on the CPU (the planner builds on the meta device)
    config = MiMConfig(input_size=(32, 32, 32), in_channels=1, **{**MIM_SWITCHES, "align_dim": align_dim_for("tiny")})
    params = sum(p.numel() for p in build_mim("hybrid", "tiny", config, backbone_sizes("hybrid", "tiny")).parameters())
    assert planner.parameter_count("hybrid", "tiny", (32, 32, 32)) == params
    terms = planner.step_memory_terms("hybrid", "tiny", [32] * 3, 2, 0)
    entry = STEP_MEMORY_FP32_AT_96[("hybrid", "tiny")]
    assert terms["state"] == pytest.approx(16 * params / 2 ** 30)                       # weights, grads, AdamW
    assert terms["runtime"] == pytest.approx(entry["fixed_gb"] - 16 * params / 2 ** 30)
    assert terms["activations"] == pytest.approx(0.65 * entry["per_subvolume_gb"] / 27 * 42)   # 2 crops x 21
    assert terms["kept"] == pytest.approx(2 * 50 * 32 ** 3 * 4 / 2 ** 30)
    fp32 = planner.step_memory_terms("hybrid", "tiny", [32] * 3, 2, 0, fraction=1.0)
    assert fp32["state"] == terms["state"] and fp32["kept"] == terms["kept"]          # autocast shrinks neither
    assert fp32["activations"] == pytest.approx(terms["activations"] / 0.65)
    explain = plan_pretraining(fingerprint([1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [300, 512, 512]), "hybrid", "base",
                               24.0)["explain"]["batch_by_device_count"]
    for said in ("fp32 state", "computed", "measured in fp32", "an estimate, not yet measured on a GPU",
                 "kept volumes", "for any device count N"):
        assert said in explain, said


@pytest.mark.parametrize("devices", [3, 6, 16])
def test_a_batch_split_for_any_device_count(devices):
    """Counts the plan does not list are split by the plan's own rule; the effective batch is kept when the
    count divides the plan's 16 crops, else it grows to the next multiple of the count."""
    from mim_nnunet.pretrain.settings import batch_split, plan_chunk

    fp = fingerprint([1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [300, 512, 512])
    plan = plan_pretraining(fp, "hybrid", "base", 8.0)                   # 6 GB left: one crop, chunk 6 (by hand above)
    assert str(devices) not in plan["batch_by_device_count"]
    batch, accum = batch_split(plan, devices, None, None, "cuda")
    per_device = {3: 6, 6: 3, 16: 1}[devices]                           # ceil(16 / N): 18, 18 and 16 crops per step
    assert (batch, accum) == (1, per_device) and plan_chunk(plan, devices, "cuda") == 6
    roomy = plan_pretraining(fp, "hybrid", "base", 70.0)                 # 4 crops fit (above): 6 -> 3 x 2, 3 -> 3 x 1
    assert batch_split(roomy, devices, None, None, "cuda") == {3: (3, 2), 6: (3, 1), 16: (1, 1)}[devices]
    assert plan_chunk(roomy, devices, "cuda") == 0
    # listed counts keep the plan's (editable) entries
    plan["batch_by_device_count"]["4"] = {"per_device_batch": 2, "accumulation": 2, "chunk": 0}
    assert batch_split(plan, 4, None, None, "cuda") == (2, 2)


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
