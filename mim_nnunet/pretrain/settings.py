"""RunSettings: everything one pre-training run needs, resolved once from the plan and the flags.

The plan gives the sizes, batch split and learning rate; flags may override them, and the resolved
values are what every rank, the checkpoint and the export record use. Plain data (JSON-able), so it
travels to spawned processes and into checkpoints loaded with ``weights_only=True``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Dict, List, Optional, Sequence

import torch

from ..defaults import PRETRAIN_INTERVALS, PRETRAIN_RECIPE
from ..errors import MimError
from ..mim.config import MiMConfig
from ..schedules import warmup_steps_for


@dataclass
class RunSettings:
    """One pre-training run. Sizes in voxels; ``mim`` holds :class:`MiMConfig`'s fields."""

    name: str
    backbone: str
    size: str
    out_dir: str
    store: str
    mim: Dict
    per_device_batch: int
    accumulation: int
    world_size: int
    steps: int
    warmup_steps: int
    lr: float
    weight_decay: float = PRETRAIN_RECIPE["weight_decay"]
    betas: List[float] = field(default_factory=lambda: list(PRETRAIN_RECIPE["betas"]))
    device: str = "cpu"
    precision: str = "fp32"
    clip_grad: Optional[float] = None
    compile: bool = False
    seed: int = PRETRAIN_RECIPE["seed"]
    stop_at: Optional[int] = None
    loader_workers: int = 2
    cpu_threads: Optional[int] = None      # per process on the CPU; None = cores / local processes
    save_every: int = PRETRAIN_INTERVALS["save_every"]
    log_every: int = PRETRAIN_INTERVALS["log_every"]
    plot_every: int = PRETRAIN_INTERVALS["plot_every"]
    recon_every: int = PRETRAIN_INTERVALS["recon_every"]
    spacing: Optional[List[float]] = None
    intensity: Optional[Dict] = None
    manifest_hash: Optional[str] = None

    @property
    def config(self) -> MiMConfig:
        return MiMConfig(**self.mim)

    @property
    def effective_batch_crops(self) -> int:
        return self.world_size * self.per_device_batch * self.accumulation

    def to_dict(self) -> Dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Dict) -> "RunSettings":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def pick_precision(requested: str, device: str) -> str:
    """``auto``: bf16 on GPUs that support it, else fp16 (with a loss scaler); fp32 on the CPU."""
    if device == "cpu":
        if requested not in ("auto", "fp32"):
            raise MimError(f"precision {requested} needs a GPU; on the CPU the engine trains in fp32")
        return "fp32"
    if requested == "auto":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return requested


def batch_split(plan: Dict, world_size: int, per_device_batch: Optional[int], accumulation: Optional[int]):
    """(per-device batch, accumulation): the flags when given, else the plan's entry for this device count."""
    if per_device_batch:
        return per_device_batch, accumulation or 1
    entry = plan["batch_by_device_count"].get(str(world_size))
    if entry is None:
        raise MimError(f"the plan has no batch split for {world_size} devices (it has "
                       f"{sorted(plan['batch_by_device_count'], key=int)}); choose one of those or set -batch/-accum")
    return entry["per_device_batch"], accumulation or entry["accumulation"]


def resolve_settings(plan: Dict, store: str, out_dir: str, world_size: int, device: str, *,
                     switches: Optional[Dict] = None, input_size: Optional[Sequence[int]] = None,
                     per_device_batch: Optional[int] = None, accumulation: Optional[int] = None,
                     steps: Optional[int] = None, lr: Optional[float] = None, precision: str = "auto",
                     **operational) -> RunSettings:
    """Settings from the plan, with the flags that override it (``None`` = the plan's or the default)."""
    from ..data.planner import lr_for, subvolumes_per_crop

    size = [int(v) for v in (input_size or plan["input_size"])]
    if len(size) == 1:
        size = size * 3
    try:
        config = MiMConfig(input_size=tuple(size), in_channels=int(plan["in_channels"]), **(switches or {}))
    except ValueError as exc:
        raise MimError(f"MiM settings: {exc}") from None
    batch, accum = batch_split(plan, world_size, per_device_batch, accumulation)
    steps = int(steps or PRETRAIN_RECIPE["steps"])
    if steps < 2:
        raise MimError(f"-steps must be at least 2 (warm-up and decay), got {steps}")
    per_crop = subvolumes_per_crop(config.levels, config.gamma2, config.gamma3)
    effective = world_size * batch * accum * per_crop
    mim = config.to_dict()
    mim["input_size"] = list(config.input_size)
    settings = RunSettings(
        name=plan["name"], backbone=plan["backbone"], size=plan["size"], out_dir=str(out_dir), store=str(store),
        mim=mim, per_device_batch=batch, accumulation=accum, world_size=world_size, steps=steps,
        warmup_steps=warmup_steps_for(steps, PRETRAIN_RECIPE["warmup_fraction"]),
        lr=float(lr if lr is not None else lr_for(effective)), device=device,
        precision=pick_precision(precision, device), spacing=plan.get("target_spacing"),
        intensity=plan.get("intensity"), manifest_hash=plan.get("manifest_hash"),
        **{k: v for k, v in operational.items() if v is not None})
    if settings.stop_at is not None and not 0 < settings.stop_at <= steps:
        raise MimError(f"-stop_at must be in 1..{steps}, got {settings.stop_at}")
    return settings


def continued_settings(saved: Dict, world_size: int, device: str, out_dir: str, store: str,
                       log=print, **operational) -> RunSettings:
    """The settings of a run being continued (``--c``): as saved, except the operational flags, the
    folders and the device. Another device count is accepted when the effective batch can be kept
    (same per-device batch, world x accumulation unchanged: the same data per step)."""
    # -stop_at belongs to one invocation: a continued run goes to the end unless given again
    settings = RunSettings.from_dict({**saved, "stop_at": None, **operational, "out_dir": str(out_dir),
                                      "store": str(store)})
    settings.device = device
    settings.precision = pick_precision("auto" if device != saved["device"] else saved["precision"], device)
    if world_size != settings.world_size:
        total = settings.world_size * settings.accumulation
        if total % world_size:
            raise MimError(f"the run used {settings.world_size} process(es) x accumulation {settings.accumulation}; "
                           f"{world_size} process(es) cannot keep that effective batch")
        log(f"continuing on {world_size} process(es) instead of {settings.world_size}: accumulation "
            f"{total // world_size} keeps the effective batch (the old ranks' RNG states are not restored)")
        settings.world_size, settings.accumulation = world_size, total // world_size
    if settings.stop_at is not None and not 0 < settings.stop_at <= settings.steps:
        raise MimError(f"-stop_at must be in 1..{settings.steps}, got {settings.stop_at}")
    return settings
