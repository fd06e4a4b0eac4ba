#!/usr/bin/env bash
# The GPU check in one command (under 8 minutes on one GPU): installs what it needs, runs every check of
# scripts/gpu_check.py and writes one JSON summary, <out>/gpu_check_summary.json (default out: gpu_check/).
# Extra arguments go to scripts/gpu_check.py (e.g. --checks benchmark,planner_memory).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$repo/scripts/setup_env.sh"
venv="${MIM_VENV:-$repo/.venv}"
# shellcheck disable=SC1091
source "$venv/bin/activate"
cd "$repo"
python scripts/gpu_check.py "$@"
