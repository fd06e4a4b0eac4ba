#!/usr/bin/env bash
# The GPU check from the kit, offline, with this machine's python3 and its torch (docs/gpu-check.md):
#   bash scripts/gpu_check.sh A -out DIR      (B for the benchmark and nnU-Net runs)
# Needs gpu_kit/ from scripts/gpu_kit.sh (written where there is network); extra arguments go to gpu_check.py.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cmd="${1:?usage: gpu_check.sh A|B [-out DIR] [gpu_check.py arguments]}"
shift
exec "${MIM_PYTHON:-python3}" "$repo/scripts/gpu_check.py" -command "$cmd" -kit "${MIM_KIT:-$repo/gpu_kit}" "$@"
