#!/usr/bin/env bash
# README command 2: install what the tests need, then run them. Extra arguments go to pytest.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$repo/scripts/setup_env.sh" test
venv="${MIM_VENV:-$repo/.venv}"
# shellcheck disable=SC1091
source "$venv/bin/activate"
cd "$repo"
# the host the times below belong to (CPU model, torch's CPU capability, threads, GPU, a 2-second matmul probe)
mim_nnunet host
# One pytest-xdist worker per usable core (at most 4; MIM_TEST_WORKERS overrides, 0 runs them in this process);
# tests that read the same shared run stay in one worker (--dist loadgroup, tests/conftest.py). One compute
# thread per worker and a short OpenMP spin: threads spinning for a core another worker holds slow both down
# several-fold (docs/benchmarks.md, "Pre-training threads on 2 cores"). MIM_CPU_THREADS too: nnUNetv2_train and
# mim_pretrain take the cores they see, whatever OMP_NUM_THREADS says.
workers="${MIM_TEST_WORKERS:-$(python -c 'import os; print(min(4, len(os.sched_getaffinity(0))))')}"
parallel=()
if [ "$workers" -gt 1 ]; then
  parallel=(-n "$workers" --dist loadgroup)
  export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" GOMP_SPINCOUNT="${GOMP_SPINCOUNT:-3000}" \
    MIM_CPU_THREADS="${MIM_CPU_THREADS:-1}"
fi
# plain pytest (not python -m) so the tests import the installed package, as users do
pytest tests "${parallel[@]}" "$@"
