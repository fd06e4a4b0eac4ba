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
# plain pytest (not python -m) so the tests import the installed package, as users do
pytest tests "$@"
