"""RunSettings: everything one pre-training run needs, resolved once from the plan and the flags.

The plan gives the sizes, switches, batch split and learning rate (edited plans included); flags may
override them, and the resolved values are what every rank, the checkpoint and the export record use.
``settings.json`` records each value and where it came from. Plain data (JSON-able), so it travels to
spawned processes and into checkpoints loaded with ``weights_only=True``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

from ..common.errors import MimError
from ..mim.config import MiMConfig
from ..optim import warmup_steps_for

# The paper's Table 3 gives the optimiser; the run length and warm-up are ours (the paper gives neither in
# steps): 100k optimiser steps, 5 % of them warm-up.
PRETRAIN_DEFAULTS = {
    "betas": (0.9, 0.95),
    "weight_decay": 0.05,
    "warmup_fraction": 0.05,
    "steps": 100_000,
    "seed": 0,
}
# How often (in optimiser steps) the engine writes each artefact.
PRETRAIN_INTERVALS = {
    "save_every": 1000,          # checkpoint_latest.pt (atomic)
    "log_every": 10,             # a line in log.txt (log.jsonl gets every step)
    "plot_every": 100,           # progress.png
    "recon_every": 1000,         # reconstructions/step_XXXXXXX.png
    "val_every": 500,            # validation reconstruction loss (and at step 0 and the last step)
}
DEFAULT_LOADER_WORKERS = 2
VALIDATION_CROPS = 8             # fixed held-out crops of the validation loss


@dataclass
class RunSettings:
    """One pre-training run. Sizes in voxels; ``mim`` holds :class:`MiMConfig`'s fields."""

    name: str
    backbone: str
    size: str
    out_dir: str
    store: str
    mim: Dict
    backbone_sizes: Dict
    per_device_batch: int
    accumulation: int
    world_size: int
    steps: int
    warmup_steps: int
    lr: float
    weight_decay: float = PRETRAIN_DEFAULTS["weight_decay"]
    betas: List[float] = field(default_factory=lambda: list(PRETRAIN_DEFAULTS["betas"]))
    device: str = "cpu"
    precision: str = "fp32"
    clip_grad: Optional[float] = None
    compile: bool = False
    checkpointing: bool = False            # activation checkpointing of the backbone (else the plan's sizes say)
    chunk: int = 0                         # sub-volumes per forward/backward pass; 0 = the whole micro-batch
    seed: int = PRETRAIN_DEFAULTS["seed"]
    deterministic: bool = False            # deterministic GPU kernels (--deterministic); the CPU always is
    stop_at: Optional[int] = None
    loader_workers: int = DEFAULT_LOADER_WORKERS
    cpu_threads: Optional[int] = None      # per process on the CPU; None: distributed.cpu_threads_per_rank
    save_every: int = PRETRAIN_INTERVALS["save_every"]
    log_every: int = PRETRAIN_INTERVALS["log_every"]
    plot_every: int = PRETRAIN_INTERVALS["plot_every"]
    recon_every: int = PRETRAIN_INTERVALS["recon_every"]
    val_every: int = PRETRAIN_INTERVALS["val_every"]
    val_crops: int = VALIDATION_CROPS
    val_cases: List[str] = field(default_factory=list)      # held out of training; empty: fixed crops
    uniform_crop_fraction: float = 1.0                       # runs before foreground sampling: all uniform
    spacing: Optional[List[float]] = None
    intensity: Optional[Dict] = None
    manifest_hash: Optional[str] = None
    # where the values came from: "plan", "plan (edited)" or "flag", per value, and the plan's edits
    provenance: Dict = field(default_factory=dict)

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
        values = {k: v for k, v in data.items() if k in known}
        if "backbone_sizes" not in values:   # checkpoints written before runs recorded their sizes
            from ..backbones import backbone_sizes
            values["backbone_sizes"] = backbone_sizes(values["backbone"], values["size"])
        return cls(**values)


def native_bf16() -> bool:
    """True when the current GPU computes bf16 natively (compute capability 8.0 and newer); older cards
    (V100, T4) would emulate it slowly, so they get fp16 with a loss scaler instead."""
    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:                  # torch without the argument: ask the compute capability
        return torch.cuda.get_device_capability()[0] >= 8


def pick_precision(requested: str, device: str) -> str:
    """``auto``: bf16 on GPUs that compute it natively, else fp16 (with a loss scaler); fp32 on the CPU."""
    if device == "cpu":
        if requested not in ("auto", "fp32"):
            raise MimError(f"precision {requested} needs a GPU; on the CPU the engine trains in fp32")
        return "fp32"
    if requested == "auto":
        return "bf16" if native_bf16() else "fp16"
    return requested


def plan_chunk(plan: Dict, world_size: int, device: str = "cuda") -> int:
    """The plan's sub-volume chunk for this device count (0 = one shot; plans before chunking had none)."""
    from ..data.planner import plan_split
    return int(plan_split(plan, world_size, device).get("chunk", 0))


def check_chunk(settings: "RunSettings") -> None:
    """Refuse a chunk setting that cannot give the one-shot step's gradients, or is not supported."""
    if settings.chunk < 0:
        raise MimError(f"-chunk must be 0 (one shot) or a number of sub-volumes, got {settings.chunk}")
    if settings.chunk and not settings.mim.get("detach_parent", True):
        raise MimError("-chunk needs -detach_parent true: with gradients through the parents' features a "
                       "level's chunks are not independent; use -chunk 0")


def batch_split(plan: Dict, world_size: int, per_device_batch: Optional[int], accumulation: Optional[int],
                device: str = "cuda"):
    """(per-device batch, accumulation): the flags when given, else the plan's split for this device count
    (its entry, or derived by the plan's rule for a count it lists none for:
    :func:`mim_nnunet.data.planner.plan_split`)."""
    if per_device_batch:
        return per_device_batch, accumulation or 1
    from ..data.planner import plan_split
    entry = plan_split(plan, world_size, device)
    return entry["per_device_batch"], accumulation or entry["accumulation"]


def resolve_settings(plan: Dict, store: str, out_dir: str, world_size: int, device: str, *,
                     switches: Optional[Dict] = None, input_size: Optional[Sequence[int]] = None,
                     per_device_batch: Optional[int] = None, accumulation: Optional[int] = None,
                     steps: Optional[int] = None, lr: Optional[float] = None, precision: str = "auto",
                     plan_edits: Sequence[str] = (), **operational) -> RunSettings:
    """Settings from the plan, with the flags that override it (``None`` = the plan's or the default).

    The plan's ``mim`` switches, ``backbone_sizes``, ``input_size`` and batch split are used as written
    (flags override single values); its ``lr`` is for its ``effective_batch_subvolumes`` and is rescaled by
    the lr rule (:func:`mim_nnunet.data.planner.rescale_lr`) when this run's effective batch differs. ``plan_edits`` (values a user edited in the plan)
    are recorded with the provenance of each value."""
    edits = set(plan_edits or ())

    def source(key: str, flagged: bool) -> str:
        return "flag" if flagged else ("plan (edited)" if key in edits else "plan")

    size = [int(v) for v in (input_size or plan["input_size"])]
    if len(size) == 1:
        size = size * 3
    try:
        config = MiMConfig(input_size=tuple(size), in_channels=int(plan["in_channels"]),
                           **{**{k: tuple(v) if isinstance(v, list) else v for k, v in plan["mim"].items()},
                              **(switches or {})})
    except (TypeError, ValueError) as exc:
        raise MimError(f"MiM settings: {exc}") from None
    batch, accum = batch_split(plan, world_size, per_device_batch, accumulation, device)
    chunk = operational.pop("chunk", None)
    steps = int(steps or PRETRAIN_DEFAULTS["steps"])
    if steps < 2:
        raise MimError(f"-steps must be at least 2 (warm-up and decay), got {steps}")
    effective = world_size * batch * accum * config.subvolumes_per_crop
    if lr is None:
        from ..data.planner import rescale_lr
        lr = rescale_lr(plan["lr"], plan["effective_batch_subvolumes"], effective)
        lr_source = source("lr", False) + (f", x sqrt({effective} / {plan['effective_batch_subvolumes']} sub-volumes)"
                                           if effective != plan["effective_batch_subvolumes"] else "")
    else:
        lr_source = "flag"
    from ..data.loader import validation_cases
    from ..data.preprocess import stored_case_ids
    seed = PRETRAIN_DEFAULTS["seed"] if operational.get("seed") is None else operational["seed"]
    held_out = validation_cases(stored_case_ids(Path(store)), seed) if Path(store).is_dir() else []
    mim = config.to_dict()
    mim["input_size"] = list(config.input_size)
    provenance = {"lr": lr_source, "input_size": source("input_size", input_size is not None),
                  "backbone_sizes": source("backbone_sizes", False),
                  "batch_split": source("batch_by_device_count", per_device_batch is not None or accumulation is not None)
                  + ("" if str(world_size) in plan["batch_by_device_count"] or per_device_batch else
                     f" (derived by its rule for {world_size} devices)"),
                  "uniform_crop_fraction": source("uniform_crop_fraction", False),
                  "chunk": source("batch_by_device_count", chunk is not None),
                  "mim": {k: source(f"mim.{k}", k in (switches or {})) for k in plan["mim"]},
                  "plan_edits": sorted(edits)}
    settings = RunSettings(
        name=plan["name"], backbone=plan["backbone"], size=plan["size"], out_dir=str(out_dir), store=str(store),
        mim=mim, backbone_sizes=dict(plan["backbone_sizes"]), per_device_batch=batch, accumulation=accum,
        world_size=world_size, steps=steps, warmup_steps=warmup_steps_for(steps, PRETRAIN_DEFAULTS["warmup_fraction"]),
        lr=float(lr), device=device, precision=pick_precision(precision, device), spacing=plan.get("target_spacing"),
        intensity=plan.get("intensity"), manifest_hash=plan.get("manifest_hash"), provenance=provenance,
        uniform_crop_fraction=plan["uniform_crop_fraction"], val_cases=held_out,
        chunk=plan_chunk(plan, world_size, device) if chunk is None else int(chunk),
        **{k: v for k, v in operational.items() if v is not None})
    if settings.stop_at is not None and not 0 < settings.stop_at <= steps:
        raise MimError(f"-stop_at must be in 1..{steps}, got {settings.stop_at}")
    check_chunk(settings)
    return settings


def check_continued_steps(out_dir: str, run_steps: int, done: int, steps: Optional[int]) -> None:
    """``--c -steps N``: the warm-up and the cosine decay to 0 are laid over the run's own total steps, so a
    continuation keeps them; any other N is refused with the reason (never silently ignored). A longer run
    is a new run (``-run NAME``): stretching a finished schedule would restart a decayed lr, and changing an
    unfinished one would make the run neither the N-step nor the original one."""
    if steps is None or int(steps) == run_steps:
        return
    if done >= run_steps:
        raise MimError(f"{out_dir}: the run finished its {run_steps} steps (warm-up, then cosine to lr 0 at step "
                       f"{run_steps}); --c cannot extend it to -steps {steps}: start a {steps}-step run with "
                       f"-steps {steps} -run NAME")
    raise MimError(f"{out_dir}: the run is at step {done} of its {run_steps}, and its lr schedule (warm-up, cosine to "
                   f"0) is laid over those {run_steps}: --c continues it as it was started, so leave out -steps "
                   f"{steps}" + (f" (use -stop_at {steps} to stop early)" if steps < run_steps else
                                 f" (start a {steps}-step run with -steps {steps} -run NAME)"))


def continued_settings(saved: Dict, world_size: int, device: str, out_dir: str, store: str,
                       log=print, steps: Optional[int] = None, done: int = 0, **operational) -> RunSettings:
    """The settings of a run being continued (``--c``): as saved, except the operational flags, the
    folders and the device. Another device count is accepted when the effective batch can be kept
    (same per-device batch, world x accumulation unchanged: the same data per step). ``steps`` (``-steps``,
    None: not given) must be the run's own (:func:`check_continued_steps`; ``done``: steps already done)."""
    check_continued_steps(out_dir, int(saved["steps"]), done, steps)
    # -stop_at belongs to one invocation: a continued run goes to the end unless given again
    settings = RunSettings.from_dict({**saved, "stop_at": None, **operational, "out_dir": str(out_dir),
                                      "store": str(store)})
    settings.device = device
    # the run's own precision, wherever it continues (auto is not picked again: another card could pick
    # another one, and the loss scaler's state belongs to the precision); the CPU trains in fp32 only
    if device == "cpu" and saved["precision"] != "fp32":
        log(f"continuing on the CPU: fp32 instead of the run's {saved['precision']}")
    settings.precision = pick_precision("auto" if device == "cpu" else saved["precision"], device)
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
    check_chunk(settings)
    return settings
