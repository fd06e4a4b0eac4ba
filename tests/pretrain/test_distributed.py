"""How a CPU run splits the cores: compute threads per rank leave a core to each rank's loader workers."""

import os

from mim_nnunet.pretrain.distributed import cpu_threads_per_rank, rank_cpu_threads


def test_compute_threads_leave_the_loader_workers_their_cores():
    # (cores, local ranks, loader workers per rank) -> compute threads per rank, by hand
    cases = {(2, 1, 0): 2, (2, 1, 1): 1, (2, 1, 2): 1, (2, 2, 0): 1, (2, 2, 1): 1,
             (16, 1, 2): 14, (16, 2, 2): 6, (8, 4, 0): 2, (8, 4, 1): 1, (1, 1, 0): 1}
    for (cores, world, workers), threads in cases.items():
        assert cpu_threads_per_rank(world, workers, cores=cores) == threads, (cores, world, workers)
    # by default the cores this process may run on (its affinity: a cpuset or taskset grants fewer than the
    # machine has); nonsense counts still give one thread
    assert cpu_threads_per_rank(1) == len(os.sched_getaffinity(0))
    assert cpu_threads_per_rank(0, -3, cores=4) == 4


def test_a_rank_takes_threads_from_the_flag_then_the_variable_then_the_cores(monkeypatch):
    """-threads, then $MIM_CPU_THREADS (CPU ranks: several runs sharing a machine), then the cores the loader
    workers leave; GPU ranks keep torchrun's OMP_NUM_THREADS."""
    cores = len(os.sched_getaffinity(0))
    monkeypatch.delenv("MIM_CPU_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert rank_cpu_threads(None, "cpu", 1, 0) == cores and rank_cpu_threads(3, "cpu", 1, 0) == 3
    assert rank_cpu_threads(None, "cuda", 1, 4) == cores          # no core left to a GPU rank's loader workers
    monkeypatch.setenv("MIM_CPU_THREADS", "5")
    assert rank_cpu_threads(None, "cpu", 2, 1) == 5 and rank_cpu_threads(2, "cpu", 1, 0) == 2
    assert rank_cpu_threads(None, "cuda", 1, 0) == cores          # the variable is for CPU processes
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    assert rank_cpu_threads(None, "cuda", 1, 0) is None and rank_cpu_threads(None, "cpu", 1, 0) == 5
