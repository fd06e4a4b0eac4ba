#!/usr/bin/env bash
# README command 1: install everything, then run the demo (stock nnU-Net commands on real CT).
# Extra arguments go to 'mim_nnunet demo' (see 'mim_nnunet demo --help').
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$repo/scripts/setup_env.sh"
venv="${MIM_VENV:-$repo/.venv}"
# shellcheck disable=SC1091
source "$venv/bin/activate"   # puts our commands on PATH and exports nnUNet_extTrainer
cd "$repo"
mim_nnunet demo "$@"
