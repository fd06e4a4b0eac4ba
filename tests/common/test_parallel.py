"""map_cases: the same results in this process (one process) and in a spawn pool."""

import math
import os

from mim_nnunet.common.parallel import map_cases


def test_one_process_runs_here_and_a_pool_gives_the_same_results():
    jobs = list(range(7))
    expected = [math.factorial(n) for n in jobs]
    here = map_cases(lambda n: (math.factorial(n), os.getpid()), jobs, 1, "here")   # a lambda: no pickling, no pool
    assert [r for r, _ in here] == expected and {pid for _, pid in here} == {os.getpid()}
    assert map_cases(math.factorial, jobs, 2, "pool") == expected
    assert sorted(map_cases(math.factorial, jobs, 2, "pool", ordered=False)) == sorted(expected)
    assert map_cases(math.factorial, [], 2, "none") == []
