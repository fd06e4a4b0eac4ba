"""Short trainer variants for tests, demos and CPUs: a budget of epochs and iterations, and the CPU
mixin (patch capped, no test-time mirroring in nnU-Net's final validation). A variant in ``trainers/``
is then two lines: its base classes and ``budget = "<name>"``."""

from __future__ import annotations

from typing import NamedTuple


class Budget(NamedTuple):
    epochs: int
    iterations: int          # training iterations per epoch
    val_iterations: int      # validation iterations per epoch


BUDGETS = {
    "1epoch": Budget(1, 2, 1),          # smoke tests
    "demo": Budget(5, 10, 2),           # the demo's default setting
    "10epochs": Budget(10, 10, 2),
    "100epochs": Budget(100, 25, 5),    # the demo's long setting
}

# Patch-size cap of the CPU variants: nnU-Net plans thin CTs with wide in-plane patches (e.g.
# 32 x 224 x 224), 11 s per iteration on 2 CPU cores; 128 in-plane is 3x cheaper.
CPU_MAX_PATCH_SIZE = (64, 128, 128)


class CPUVariant:
    """Mixin of the CPU-sized variants: patch capped at :data:`CPU_MAX_PATCH_SIZE`, no test-time
    mirroring in nnU-Net's final validation (their users predict with --disable_tta anyway)."""

    max_patch_size = CPU_MAX_PATCH_SIZE
    inference_mirroring = False
