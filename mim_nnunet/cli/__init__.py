"""Command-line entry points (argument parsing only; the work is done by the library):
``mim_nnunet`` (:mod:`.main`), ``mim_pretrain`` (:mod:`.pretrain`), ``mim_plan_and_preprocess``
(:mod:`.plan`), ``mim_evaluate`` (:mod:`.evaluate`)."""

from __future__ import annotations

import sys
import warnings
from typing import Callable

from ..common.errors import MimError

# Deprecation notices that third-party imports (nnU-Net, MONAI) print on every command; they are not
# the user's to act on and would bury our one-line errors.
THIRD_PARTY_NOISE = (r"`torch\.jit\.interface` is deprecated",)


def run_guarded(func: Callable[[], int], prog: str) -> int:
    """Run ``func``; our one-line errors become ``prog: error: ...`` and exit status 2."""
    for pattern in THIRD_PARTY_NOISE:
        warnings.filterwarnings("ignore", message=pattern, category=FutureWarning)
    try:
        return func()
    except MimError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
