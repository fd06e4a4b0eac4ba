"""A function over many cases, with a progress bar: in a pool of fresh interpreters, or in this process."""

from __future__ import annotations

from multiprocessing import get_context
from typing import Callable, Iterable, List, TypeVar

from tqdm import tqdm

Job = TypeVar("Job")
Result = TypeVar("Result")


def map_cases(fn: Callable[[Job], Result], jobs: Iterable[Job], num_processes: int, desc: str,
              ordered: bool = True) -> List[Result]:
    """``[fn(job) for job in jobs]``: in this process for ``num_processes <= 1`` (a pool process is a fresh
    interpreter whose imports cost seconds, more than a few small cases), else in a ``spawn`` pool of
    ``num_processes`` (not fork: a forked child inherits the parent's threads and CUDA state). ``ordered``:
    the results in the jobs' order (else as they finish)."""
    jobs = list(jobs)
    if num_processes <= 1:
        return [fn(job) for job in tqdm(jobs, desc=desc)]
    with get_context("spawn").Pool(num_processes) as pool:
        results = pool.imap(fn, jobs, chunksize=1) if ordered else pool.imap_unordered(fn, jobs)
        return list(tqdm(results, total=len(jobs), desc=desc))
