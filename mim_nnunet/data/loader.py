"""Random 2S crops from the store for pre-training: DataLoader workers reading through memory maps.

Crop centres are drawn uniformly from the foreground (body) voxels of the whole collection: a case is
picked with a probability proportional to its foreground volume, then one of its stored foreground
coordinates. A fraction of the crops (the plan's ``uniform_crop_fraction``) picks a case uniformly and
places the crop uniformly instead. Uniform sampling alone serves crops of air and padding (thin scans
padded to 2S, the air around the patient) whose norm-pix targets are trivial. Batches are a pure function of (seed, global
batch index) (:class:`IndexedCropBatches`): ranks never share a batch, the stream does not depend on how
many devices share it, and a resumed run continues with exactly the crops an uninterrupted one would
have seen. Sampling never ends; the engine counts steps.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from .preprocess import case_paths, load_case_meta, load_foreground, stored_case_ids

# Fraction of crops placed uniformly rather than around a foreground voxel: enough that the model still
# meets air, the table and padding, few enough that most steps reconstruct anatomy.
UNIFORM_CROP_FRACTION = 0.1
# Validation of pre-training: cases held out from training when the collection has enough of them,
# else fixed crops of the training cases (their own random stream: never a training batch).
VALIDATION_MIN_CASES = 20
VALIDATION_FRACTION = 0.05
VALIDATION_MAX_CASES = 20
VALIDATION_STREAM = 2          # separates validation crops from training crops (stream 0)


def validation_cases(case_ids: Sequence[str], seed: int) -> List[str]:
    """Cases held out from training for validation: ``VALIDATION_FRACTION`` of them (1 to
    ``VALIDATION_MAX_CASES``, chosen by a seeded permutation) when there are at least
    ``VALIDATION_MIN_CASES``; none otherwise (validation then uses fixed crops of the training cases)."""
    cases = sorted(case_ids)
    if len(cases) < VALIDATION_MIN_CASES:
        return []
    k = min(VALIDATION_MAX_CASES, max(1, round(VALIDATION_FRACTION * len(cases))))
    order = np.random.default_rng([seed, VALIDATION_STREAM]).permutation(len(cases))
    return sorted(cases[i] for i in order[:k])


def read_crop(array: np.ndarray, crop_size: Sequence[int], background: Sequence[float],
              rng: np.random.Generator, centre: Optional[Sequence[int]] = None) -> np.ndarray:
    """A ``crop_size`` window of ``array`` ``(C, Z, Y, X)``: random, or around ``centre`` (z, y, x) and
    shifted to stay inside the volume. Axes shorter than the crop are placed at a random offset inside
    it and the rest is filled with the background value."""
    c = array.shape[0]
    out = np.empty((c, *crop_size), np.float32)
    out[:] = np.asarray(background, np.float32).reshape(c, 1, 1, 1)
    src, dst = [slice(None)], [slice(None)]
    for axis, (dim, size) in enumerate(zip(array.shape[1:], crop_size)):
        if dim >= size:
            if centre is None:
                start = int(rng.integers(0, dim - size + 1))
            else:
                start = min(max(int(centre[axis]) - size // 2, 0), dim - size)
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
                 world_size: int = 1, start: int = 0, case_ids: Sequence[str] = (),
                 uniform_fraction: float = 1.0, stream: int = 0):
        self.store = Path(store)
        self.crop_size = [int(s) for s in crop_size]
        self.batch_size, self.seed, self.rank, self.world_size, self.start = batch_size, seed, rank, world_size, start
        self.uniform_fraction, self.stream = uniform_fraction, stream
        self.cases: List[str] = list(case_ids) or stored_case_ids(self.store)
        if not self.cases:
            raise ValueError(f"no preprocessed cases in {self.store}")
        self._meta: Dict[str, Dict] = {}
        self._foreground: Optional[List[np.ndarray]] = None
        self._cumulative: Optional[np.ndarray] = None

    def _load_foreground(self) -> None:
        """Every case's foreground coordinates and the cumulative foreground volume (read once, lazily:
        the dataset is built in the main process and used in the workers)."""
        found = [load_foreground(self.store, c) for c in self.cases]
        self._foreground = [coords for coords, _ in found]
        volumes = np.array([voxels if len(coords) else 0 for coords, voxels in found], np.float64)
        self._cumulative = np.cumsum(volumes) if volumes.sum() > 0 else None

    def crop(self, global_batch: int, j: int) -> torch.Tensor:
        """Crop j of global batch ``global_batch``: ``(C, *crop_size)`` float32 (``stream`` separates
        other streams of the same run, e.g. validation crops, from the training crops)."""
        rng = np.random.default_rng([self.seed, global_batch, j] + ([self.stream] if self.stream else []))
        centre = None
        if self.uniform_fraction < 1.0 and rng.random() >= self.uniform_fraction:
            if self._foreground is None:
                self._load_foreground()
            if self._cumulative is not None:
                index = int(np.searchsorted(self._cumulative, rng.random() * self._cumulative[-1], side="right"))
                foreground = self._foreground[index]
                centre = foreground[int(rng.integers(len(foreground)))]
        if centre is None:
            index = int(rng.integers(len(self.cases)))
        case_id = self.cases[index]
        if case_id not in self._meta:
            self._meta[case_id] = load_case_meta(self.store, case_id)
        array = np.load(case_paths(self.store, case_id)[0], mmap_mode="r")
        return torch.from_numpy(read_crop(array, self.crop_size, self._meta[case_id]["background"], rng, centre))

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
                        num_workers: int = 2, seed: int = 0, rank: int = 0, world_size: int = 1,
                        case_ids: Sequence[str] = (), uniform_fraction: float = 1.0) -> DataLoader:
    """Endless, resumable batches (see :class:`IndexedCropBatches`); ``start`` = batches already consumed."""
    dataset = IndexedCropBatches(store, crop_size, batch_size, seed, rank, world_size, start, case_ids,
                                 uniform_fraction)
    return DataLoader(dataset, batch_size=None, num_workers=num_workers, persistent_workers=num_workers > 0,
                      pin_memory=torch.cuda.is_available())
