"""MiMConfig: every switch of the method (docs/method.md) in one validated record, with the paper's defaults."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Tuple

from .losses import LEVEL_WEIGHT_SCHEDULES
from .tokens import INPUT_MULTIPLE, TOKEN_SIZE

# Every switch of the method (docs/method.md), at its default: the fields of MiMConfig (besides the input's shape),
# the pre-training plan's "mim" record and the flags of mim_pretrain.
MIM_SWITCHES = {
    "levels": 3,                      # 1 = plain MAE3D, 2 = stop after L2, 3 = full MiM
    "r1": 0.5,                        # fraction of the 8 L1 units masked
    "r2": 0.6,                        # fraction of L2 tokens masked
    "r3": 0.5,                        # fraction of L3 tokens masked
    "gamma2": 4,                      # L2 volumes cut from each L1 volume
    "gamma3": 4,                      # L3 volumes cut from each L2 volume
    "next_level_from": "masked",      # or "visible" (Table 11)
    "norm_pix_loss": True,
    "align_loss": "infonce",          # or "byol" (Table 12)
    "align_pairs": (True, True),      # (L1-L2, L2-L3) terms on/off (Table 10)
    "detach_parent": True,            # stop-gradient on parent features
    "tau": 0.1,                       # InfoNCE temperature (the paper gives none)
    "align_dim": 2048,                # projection output D
    "loss_weights": (1.0, 1.0, 1.0, 0.1, 0.1),   # b1..b5 of Eq. 10 (Table 3)
    "level_weight_schedule": "concurrent",       # or coarse_to_fine / fine_to_coarse (Table 14)
}
# The alignment projections' output D per model size, where it is not the paper's 2048. D = 2048 is the
# paper's value for its model (base, decoder width 576) and is kept for every full size. The tiny size
# (tests, CPU demos; decoder width 144) uses 256: at 2048 its four Linear-GELU-Linear projections held 18 M
# of its 21 M parameters (a 255 MB checkpoint with Adam's two moments) to rank at most 216 candidates (the
# tokens of an L2 volume at S = 96), which 256 dims, wider than the 144 features they project, separate.
# The planner writes the value into the plan's ``mim`` record; ``-align_dim`` overrides it per run.
ALIGN_DIM_BY_SIZE = {"tiny": 256}


def align_dim_for(size: str) -> int:
    """The alignment projections' D for a model size: ``ALIGN_DIM_BY_SIZE``, else the paper's 2048."""
    return ALIGN_DIM_BY_SIZE.get(size, MIM_SWITCHES["align_dim"])


def _default(name):
    value = MIM_SWITCHES[name]
    return field(default_factory=lambda: tuple(value)) if isinstance(value, tuple) else field(default=value)


@dataclass(frozen=True)
class MiMConfig:
    """Geometry, loss and ablation switches of MiM. ``input_size`` is S (each axis a multiple of 32)."""

    input_size: Tuple[int, int, int] = (96, 96, 96)
    in_channels: int = 1
    levels: int = _default("levels")
    r1: float = _default("r1")
    r2: float = _default("r2")
    r3: float = _default("r3")
    gamma2: int = _default("gamma2")
    gamma3: int = _default("gamma3")
    next_level_from: str = _default("next_level_from")
    norm_pix_loss: bool = _default("norm_pix_loss")
    align_loss: str = _default("align_loss")
    align_pairs: Tuple[bool, bool] = _default("align_pairs")
    detach_parent: bool = _default("detach_parent")
    tau: float = _default("tau")
    align_dim: int = _default("align_dim")
    loss_weights: Tuple[float, float, float, float, float] = _default("loss_weights")
    level_weight_schedule: str = _default("level_weight_schedule")

    def __post_init__(self):
        object.__setattr__(self, "input_size", tuple(int(s) for s in self.input_size))
        if len(self.input_size) != 3 or any(s <= 0 or s % INPUT_MULTIPLE for s in self.input_size):
            raise ValueError(f"input_size must be 3 positive multiples of {INPUT_MULTIPLE}, got {self.input_size}")
        if self.in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {self.in_channels}")
        if self.levels not in (1, 2, 3):
            raise ValueError(f"levels must be 1, 2 or 3, got {self.levels}")
        if self.next_level_from not in ("masked", "visible"):
            raise ValueError(f"next_level_from must be 'masked' or 'visible', got {self.next_level_from!r}")
        if self.align_loss not in ("infonce", "byol"):
            raise ValueError(f"align_loss must be 'infonce' or 'byol', got {self.align_loss!r}")
        if self.level_weight_schedule not in LEVEL_WEIGHT_SCHEDULES:
            raise ValueError(f"level_weight_schedule must be one of {sorted(LEVEL_WEIGHT_SCHEDULES)}, "
                             f"got {self.level_weight_schedule!r}")
        if len(self.loss_weights) != 5 or len(self.align_pairs) != 2:
            raise ValueError("loss_weights needs 5 values (b1..b5) and align_pairs 2 flags")
        if self.tau <= 0:
            raise ValueError(f"tau must be positive, got {self.tau}")
        t = self.num_tokens
        for name, ratio, count in (("r1", self.r1, 8), ("r2", self.r2, t), ("r3", self.r3, t)):
            n = num_masked(count, ratio)
            if not 0 < n < count:
                raise ValueError(f"{name}={ratio} masks {n} of {count}; it must mask at least one and leave one")
        pick = "masked" if self.next_level_from == "masked" else "visible"
        if self.levels >= 2:
            avail = num_masked(8, self.r1) if pick == "masked" else 8 - num_masked(8, self.r1)
            if not 0 < self.gamma2 <= avail:
                raise ValueError(f"gamma2={self.gamma2} L2 volumes need as many {pick} L1 units; there are {avail}")
        if self.levels >= 3:
            avail = num_masked(t, self.r2) if pick == "masked" else t - num_masked(t, self.r2)
            if not 0 < self.gamma3 <= avail:
                raise ValueError(f"gamma3={self.gamma3} L3 volumes need as many {pick} L2 tokens; there are {avail}")

    @property
    def grid(self) -> Tuple[int, int, int]:
        """Token grid G = S / 16."""
        return tuple(s // TOKEN_SIZE for s in self.input_size)

    @property
    def num_tokens(self) -> int:
        g = self.grid
        return g[0] * g[1] * g[2]

    @property
    def l1_crop_size(self) -> Tuple[int, int, int]:
        """Native size of an L1 crop, 2S."""
        return tuple(2 * s for s in self.input_size)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def subvolumes_per_crop(self) -> int:
        """Sub-volumes one L1 crop yields: 1 L1, gamma2 L2 and gamma2 x gamma3 L3 volumes, per active level."""
        return subvolumes_per_crop(self.levels, self.gamma2, self.gamma3)


def subvolumes_per_crop(levels: int, gamma2: int, gamma3: int) -> int:
    """1 + gamma2 (if L2 is on) + gamma2 x gamma3 (if L3 is on)."""
    return 1 + (gamma2 if levels >= 2 else 0) + (gamma2 * gamma3 if levels >= 3 else 0)


def num_masked(count: int, ratio: float) -> int:
    """How many of ``count`` items a ratio masks: MAE's rule, ``count - int(count * (1 - ratio))``."""
    return count - int(count * (1.0 - ratio))
