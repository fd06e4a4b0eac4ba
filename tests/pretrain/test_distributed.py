"""How a CPU run splits the cores: compute threads per rank leave a core to each rank's loader workers."""

import os

from mim_nnunet.pretrain.distributed import cpu_threads_per_rank


def test_compute_threads_leave_the_loader_workers_their_cores():
    # (cores, local ranks, loader workers per rank) -> compute threads per rank, by hand
    cases = {(2, 1, 0): 2, (2, 1, 1): 1, (2, 1, 2): 1, (2, 2, 0): 1, (2, 2, 1): 1,
             (16, 1, 2): 14, (16, 2, 2): 6, (8, 4, 0): 2, (8, 4, 1): 1, (1, 1, 0): 1}
    for (cores, world, workers), threads in cases.items():
        assert cpu_threads_per_rank(world, workers, cores=cores) == threads, (cores, world, workers)
    # this machine's cores by default; nonsense counts still give one thread
    assert cpu_threads_per_rank(1) == (os.cpu_count() or 1)
    assert cpu_threads_per_rank(0, -3, cores=4) == 4
