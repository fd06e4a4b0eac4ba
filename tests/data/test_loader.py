"""Random 2S crops from the store: shapes, padding, seeding per rank, resumable batch indices."""

import json

import numpy as np
import torch

from mim_nnunet.data.loader import (
    IndexedCropBatches,
    make_indexed_loader,
    read_crop,
    validation_cases,
)
from mim_nnunet.data.preprocess import load_foreground, stored_case_ids


def make_store(tmp_path, shapes):
    store = tmp_path / "store"
    store.mkdir()
    for i, shape in enumerate(shapes):
        np.save(store / f"c{i}.npy", np.random.default_rng(i).random((1, *shape)).astype(np.float16))
        (store / f"c{i}.json").write_text(json.dumps({"case_id": f"c{i}", "background": [-7.0]}))
    return store


def test_read_crop_takes_a_window_or_pads_with_background():
    array = np.arange(1 * 6 * 8 * 10, dtype=np.float32).reshape(1, 6, 8, 10)
    rng = np.random.default_rng(0)
    crop = read_crop(array, (4, 8, 12), [-1.0], rng)
    assert crop.shape == (1, 4, 8, 12)
    # z: a window of 4 of 6; y: all 8; x: all 10 inside 12, the 2 others background
    filled = crop[0] != -1.0
    assert filled.sum() == 4 * 8 * 10 and (crop[0][~filled] == -1.0).all()
    zs = np.unique(crop[0][filled] // 80)                      # the z index of each voxel in the source
    assert len(zs) == 4 and zs.max() - zs.min() == 3
    x_cols = np.where(filled[0, 0])[0]
    assert np.array_equal(crop[0, 0, 0, x_cols], array[0, int(zs.min()), 0, :])


def test_batches_are_seeded_per_run_and_rank(tmp_path):
    store = make_store(tmp_path, [(20, 20, 20)] * 8)
    take = lambda d, n=5: [d.batch(k) for k in range(n)]
    a = take(IndexedCropBatches(store, (8, 8, 8), batch_size=1, seed=1, rank=0, world_size=2))
    b = take(IndexedCropBatches(store, (8, 8, 8), batch_size=1, seed=1, rank=0, world_size=2))
    c = take(IndexedCropBatches(store, (8, 8, 8), batch_size=1, seed=1, rank=1, world_size=2))
    d = take(IndexedCropBatches(store, (8, 8, 8), batch_size=1, seed=2, rank=0, world_size=2))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not any(torch.equal(x, y) for x, y in zip(a, c))
    assert not any(torch.equal(x, y) for x, y in zip(a, d))


def test_dataloader_workers_yield_batches_of_2s_crops(tmp_path):
    store = make_store(tmp_path, [(30, 12, 40), (10, 10, 10)])
    loader = make_indexed_loader(store, (16, 16, 16), batch_size=3, num_workers=2, seed=0)
    batches = [b for _, b in zip(range(4), loader)]
    assert all(b.shape == (3, 1, 16, 16, 16) and b.dtype == torch.float32 for b in batches)
    assert any((b == -7.0).any() for b in batches)              # the small case is padded with its background


def test_indexed_batches_resume_exactly_and_differ_by_rank(tmp_path):
    store = make_store(tmp_path, [(20, 20, 20), (12, 30, 16), (18, 18, 18)])
    full = [b for _, b in zip(range(6), make_indexed_loader(store, (8, 8, 8), batch_size=2, num_workers=2, seed=3))]
    resumed = [b for _, b in zip(range(3), make_indexed_loader(store, (8, 8, 8), batch_size=2, start=3,
                                                               num_workers=2, seed=3))]
    assert all(torch.equal(a, b) for a, b in zip(full[3:], resumed))            # same batches after a restart
    direct = IndexedCropBatches(store, (8, 8, 8), batch_size=2, seed=3)
    assert all(torch.equal(full[b], direct.batch(b)) for b in range(6))          # order = batch index
    assert len({tuple(b.flatten()[:50].tolist()) for b in full}) == 6             # no batch repeats
    # two ranks interleave the global batches of one rank: 1 device x accumulation 2 == 2 devices x 1
    r0 = IndexedCropBatches(store, (8, 8, 8), batch_size=2, seed=3, rank=0, world_size=2)
    r1 = IndexedCropBatches(store, (8, 8, 8), batch_size=2, seed=3, rank=1, world_size=2)
    for k in range(3):
        assert torch.equal(r0.batch(k), full[2 * k]) and torch.equal(r1.batch(k), full[2 * k + 1])
        assert not torch.equal(r0.batch(k), r1.batch(k))


def test_crops_of_real_ct_hold_the_body(tmp_path, monkeypatch):
    """On the demo's real CTs, crops centred on foreground voxels hold far more body than uniform crops
    (body: above -500 HU = 0.25 in the stored [0, 1] scale)."""
    from mim_nnunet.data.pipeline import prepare
    from mim_nnunet.demo.data import prepare_demo_data

    data = prepare_demo_data(tmp_path / "raw", tmp_path / "data", log=lambda *_: None)
    monkeypatch.setenv("MIM_DATA_ROOT", str(tmp_path / "data"))
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "pre"))
    prepared = prepare(["demo"], name="fg", size="tiny", num_processes=1, log=lambda *_: None)
    assert data["collection"].is_dir() and prepared.plan["foreground"]["CT"]["above_hu"] == -500.0
    crop = [64, 64, 64]
    body = 0.25
    fractions = {}
    for name, uniform in (("uniform", 1.0), ("foreground", 0.0), ("plan", prepared.plan["uniform_crop_fraction"])):
        batches = IndexedCropBatches(prepared.store, crop, batch_size=1, seed=0, uniform_fraction=uniform)
        fractions[name] = np.array([(batches.batch(k) > body).float().mean().item() for k in range(100)])
    # measured: body fraction 0.51 uniform vs 0.74 foreground; crops with < 5 % body: 14 % vs 0
    assert fractions["foreground"].mean() > fractions["uniform"].mean() + 0.1
    assert (fractions["foreground"] < 0.05).mean() == 0 < (fractions["uniform"] < 0.05).mean()
    assert fractions["plan"].mean() > fractions["uniform"].mean() + 0.05
    # every stored coordinate is a body voxel of its case
    for case in stored_case_ids(prepared.store)[:2]:
        array = np.load(prepared.store / f"{case}.npy", mmap_mode="r")
        coords, voxels = load_foreground(prepared.store, case)
        assert voxels >= len(coords)
        assert len(coords) and (array[0][tuple(coords.T)] > body).all()


def test_held_out_validation_cases_only_for_large_collections():
    few = [f"c{i}" for i in range(19)]
    assert validation_cases(few, seed=0) == []
    many = [f"c{i:03d}" for i in range(100)]
    held = validation_cases(many, seed=0)
    assert len(held) == 5 and set(held) < set(many) and held == validation_cases(list(reversed(many)), seed=0)
    assert held != validation_cases(many, seed=1)
    assert len(validation_cases([f"c{i:04d}" for i in range(1000)], seed=0)) == 20
