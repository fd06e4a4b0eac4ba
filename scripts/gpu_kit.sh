#!/usr/bin/env bash
# The GPU check kit, written here (with network) for an offline CUDA machine whose python3 has torch:
# one wheelhouse per command of scripts/gpu_check.py under -o (default gpu_kit/), sizes in kit.md.
# Arguments go to scripts/gpu_kit.py (-python, -platform, -have, -commands, -limit_mib); docs/gpu-check.md.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
exec "${MIM_PYTHON:-python3}" "$repo/scripts/gpu_kit.py" "$@"
