"""Short trainer variants for tests, demos and CPUs: a budget of epochs and iterations, and the CPU
mixin (patch capped, no test-time mirroring in nnU-Net's final validation). A variant in ``trainers/``
is then two lines: its base classes and ``budget = "<name>"``."""

from __future__ import annotations

from typing import NamedTuple, Optional


class Budget(NamedTuple):
    epochs: int
    iterations: int          # training iterations per epoch
    val_iterations: int      # validation iterations per epoch
    # peak lr; None keeps the trainer's optimiser default (1e-4 for MiM, tuned for 1000s of epochs: a budget of a
    # few hundred iterations needs a larger one to move the weights at all)
    lr: Optional[float] = None
    # nnU-Net's sliding-window prediction of the validation cases after training (validation/ and its
    # summary.json); a demo that scores its own held-out cases skips it (40 s per run on 2 CPU cores)
    final_validation: bool = True
    # at most this many validation cases in that final validation (None: all of the fold's). nnU-Net predicts
    # each case with sliding windows at full resolution: about 5 minutes per 512 x 512 CT on 2 CPU cores, longer
    # than a short budget's training; the first cases of the fold's validation list are kept
    val_cases: Optional[int] = None
    # nnU-Net's mirror augmentation (and test-time mirroring); off as in its nnUNetTrainerNoMirroring. A
    # short budget on consistently oriented cases may do better without it: mirrored, the liver (right) and
    # the spleen (left) trade sides, and 120 iterations do not learn to tell them apart by shape alone
    mirroring: bool = True


BUDGETS = {
    "1epoch": Budget(1, 2, 1, val_cases=1),          # smoke tests
    # the demo's default and full settings: 120 iterations (two runs at a time: 137-144 s on a 2-core Xeon). Peak lr
    # chosen without the held-out halves: cross-case liver DSC (train on one case's training half, score the
    # other's; seed 0; window -175..250 HU), MiM lr 1e-3 56/50 %, 3e-3 72/55, 1e-2 45/46; scratch 3e-3 59/49,
    # 1e-2 43/43. Mirroring off, checked the same way once the cases were oriented alike (RAS): scratch 62/52 ->
    # 67/65, MiM 74/52 -> 66/59 (mean of both networks 60 -> 64; one seed, so a lean, not a proof)
    "demo": Budget(12, 10, 1, lr=3e-3, final_validation=False, mirroring=False),
    # the demo's quick setting (a smoke run): the demo budget's switches at one epoch of 2 + 1 iterations
    "quick": Budget(1, 2, 1, lr=3e-3, final_validation=False, mirroring=False),
    "10epochs": Budget(10, 10, 2, val_cases=2),
    "100epochs": Budget(100, 25, 5, lr=1e-3, val_cases=5),  # the demo's long setting
}

# Patch-size cap of the CPU variants: nnU-Net plans thin CTs with wide in-plane patches (e.g.
# 32 x 224 x 224), 11 s per iteration on 2 CPU cores; 128 in-plane is 3x cheaper.
CPU_MAX_PATCH_SIZE = (64, 128, 128)


class CPUVariant:
    """Mixin of the CPU-sized variants: patch capped at :data:`CPU_MAX_PATCH_SIZE`, no test-time
    mirroring in nnU-Net's final validation (their users predict with --disable_tta anyway)."""

    max_patch_size = CPU_MAX_PATCH_SIZE
    inference_mirroring = False
