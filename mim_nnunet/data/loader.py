"""Random 2S crops from the store for pre-training: DataLoader workers reading through memory maps.

Batches are a pure function of (seed, global batch index) (:class:`IndexedCropBatches`): ranks never
share a batch, the stream does not depend on how many devices share it, and a resumed run continues
with exactly the crops an uninterrupted one would have seen. Sampling never ends; the engine counts steps.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Iterator, List, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from .preprocess import case_paths, load_case_meta, stored_case_ids


def read_crop(array: np.ndarray, crop_size: Sequence[int], background: Sequence[float],
              rng: np.random.Generator) -> np.ndarray:
    """A random ``crop_size`` window of ``array`` ``(C, Z, Y, X)``; axes shorter than the crop are
    placed at a random offset inside it and the rest is filled with the background value."""
    c = array.shape[0]
    out = np.empty((c, *crop_size), np.float32)
    out[:] = np.asarray(background, np.float32).reshape(c, 1, 1, 1)
    src, dst = [slice(None)], [slice(None)]
    for dim, size in zip(array.shape[1:], crop_size):
        if dim >= size:
            start = int(rng.integers(0, dim - size + 1))
            src.append(slice(start, start + size))
            dst.append(slice(0, size))
        else:
            offset = int(rng.integers(0, size - dim + 1))
            src.append(slice(0, dim))
            dst.append(slice(offset, offset + dim))
    out[tuple(dst)] = array[tuple(src)]          # only the window's bytes are read from the memory map
    return out


def global_batch_index(local_index: int, rank: int, world_size: int) -> int:
    """Rank ``rank``'s ``local_index``-th batch is batch ``local_index * world_size + rank`` of the run.

    With accumulation A, step s, micro-batch m is local batch ``s * A + m``; so 1 device accumulating 2
    and 2 devices accumulating 1 see the same global batches 2s, 2s + 1 in each step.
    """
    return local_index * world_size + rank


class IndexedCropBatches(IterableDataset):
    """Batches ``(B, C, *crop_size)`` whose content is a pure function of (seed, global batch index).

    Crop j of global batch g is drawn from all cases by a generator seeded with ``(seed, g, j)``; rank r
    of W takes global batches r, r + W, r + 2W, ... (see :func:`global_batch_index`), so ranks never share
    a batch and the stream of a run does not depend on how many devices share it. Worker w of K yields
    local batches ``start + w``, ``start + w + K``, ...; the DataLoader takes workers in turn, so batches
    arrive in index order and a run resumed at ``start`` sees exactly the batches an uninterrupted run
    would have seen (the sampler's position is just the batch count: nothing else to save).
    """

    def __init__(self, store: Path, crop_size: Sequence[int], batch_size: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1, start: int = 0, case_ids: Sequence[str] = ()):
        self.store = Path(store)
        self.crop_size = [int(s) for s in crop_size]
        self.batch_size, self.seed, self.rank, self.world_size, self.start = batch_size, seed, rank, world_size, start
        self.cases: List[str] = list(case_ids) or stored_case_ids(self.store)
        if not self.cases:
            raise ValueError(f"no preprocessed cases in {self.store}")
        self._meta: Dict[str, Dict] = {}

    def crop(self, global_batch: int, j: int) -> torch.Tensor:
        rng = np.random.default_rng([self.seed, global_batch, j])
        case_id = self.cases[int(rng.integers(len(self.cases)))]
        if case_id not in self._meta:
            self._meta[case_id] = load_case_meta(self.store, case_id)
        array = np.load(case_paths(self.store, case_id)[0], mmap_mode="r")
        return torch.from_numpy(read_crop(array, self.crop_size, self._meta[case_id]["background"], rng))

    def batch(self, local_index: int) -> torch.Tensor:
        g = global_batch_index(local_index, self.rank, self.world_size)
        return torch.stack([self.crop(g, j) for j in range(self.batch_size)])

    def __iter__(self) -> Iterator[torch.Tensor]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        b = self.start + worker
        while True:
            yield self.batch(b)
            b += workers


def make_indexed_loader(store: Path, crop_size: Sequence[int], batch_size: int, start: int = 0,
                        num_workers: int = 2, seed: int = 0, rank: int = 0, world_size: int = 1) -> DataLoader:
    """Endless, resumable batches (see :class:`IndexedCropBatches`); ``start`` = batches already consumed."""
    dataset = IndexedCropBatches(store, crop_size, batch_size, seed, rank, world_size, start)
    return DataLoader(dataset, batch_size=None, num_workers=num_workers, persistent_workers=num_workers > 0,
                      pin_memory=torch.cuda.is_available())
