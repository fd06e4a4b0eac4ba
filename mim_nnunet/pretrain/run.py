"""One ``mim_pretrain`` invocation: prepare the data, resolve the run's settings (a new run, or the one
``--c`` continues), and launch it here, on spawned local processes, or as a rank of a ``torchrun`` job."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from ..common.atomic import write_json_atomic
from ..common.errors import MimError
from ..common.layout import CHECKPOINT, SETTINGS, run_folder
from . import distributed as D
from .checkpoint import load_checkpoint, remove_stale_temporaries
from .settings import RunSettings, continued_settings, resolve_settings


@dataclass
class RunRequest:
    """What the user asked for: the data to prepare (``prepare(device, local_processes)`` runs it for a run on
    that many local processes of that device and returns a :class:`mim_nnunet.data.pipeline.Prepared`), the
    run, and the flags that override the plan."""

    prepare: Callable[[str, int], object]
    backbone: str
    size: str
    gpus: int = 1
    device: Optional[str] = None
    resume: bool = False
    run: Optional[str] = None
    switches: Dict = field(default_factory=dict)
    input_size: Optional[Sequence[int]] = None
    per_device_batch: Optional[int] = None
    accumulation: Optional[int] = None
    steps: Optional[int] = None
    lr: Optional[float] = None
    precision: str = "auto"
    seed: Optional[int] = None
    clip_grad: Optional[float] = None
    operational: Dict = field(default_factory=dict)    # stop_at, workers, intervals, threads, compile


def pick_device(requested: Optional[str], gpus: int, log=print) -> str:
    """``cuda`` when asked or when a GPU is visible (checked against ``gpus``), else ``cpu`` (said)."""
    found = D.visible_gpus()
    if requested == "cpu":
        return "cpu"
    if requested == "cuda" or found:
        if not found:
            raise MimError("-device cuda: no GPU is visible to PyTorch; use -device cpu")
        if gpus > found:
            raise MimError(f"-gpus {gpus}: only {found} GPU(s) are visible")
        return "cuda"
    log(f"no GPU found: running on the CPU ({gpus} process(es), fp32)")
    return "cpu"


def settings_for(request: RunRequest, world_size: int, device: str, log=print) -> RunSettings:
    """Prepare the data and resolve the run's settings; ``settings.json`` records them."""
    prepared = request.prepare(device, int(os.environ.get("LOCAL_WORLD_SIZE", world_size)))
    out = run_folder(prepared.plan["name"], request.backbone, request.size, request.run)
    latest = out / CHECKPOINT
    for stale in remove_stale_temporaries(out):
        log(f"removed {stale} (half-written by a run that was killed)")
    if request.resume:
        state = load_checkpoint(latest)
        if state["settings"].get("manifest_hash") != prepared.plan["manifest_hash"]:
            raise MimError(f"{latest}: the run started on other data (manifest "
                           f"{str(state['settings'].get('manifest_hash'))[:12]}, now "
                           f"{prepared.plan['manifest_hash'][:12]}); an exact continuation needs the same -d")
        settings = continued_settings(state["settings"], world_size, device, out, prepared.store,
                                      steps=request.steps, done=int(state["step"]), **request.operational)
    else:
        if latest.is_file():
            raise MimError(f"{out} already holds a run ({CHECKPOINT}); continue it with --c, or start another with "
                           f"-run NAME")
        settings = resolve_settings(prepared.plan, prepared.store, out, world_size, device,
                                    switches=request.switches, input_size=request.input_size,
                                    per_device_batch=request.per_device_batch, accumulation=request.accumulation,
                                    steps=request.steps, lr=request.lr, precision=request.precision,
                                    plan_edits=prepared.plan_edits, seed=request.seed,
                                    clip_grad=request.clip_grad, **request.operational)
    write_json_atomic(out / SETTINGS, settings.to_dict())
    return settings


def written_by_rank0(settings: RunSettings, resume: bool) -> List[Path]:
    """What rank 0 writes and every rank reads: the preprocessed store, the run's settings and, to
    continue, its checkpoint (multi-node runs need them on a filesystem shared at the same path)."""
    out = Path(settings.out_dir)
    return [Path(settings.store), out / SETTINGS] + ([out / CHECKPOINT] if resume else [])


def run_pretraining(request: RunRequest) -> None:
    """Prepare, resolve and train (``-gpus`` local processes, or this rank of a torchrun job)."""
    from .engine import launch

    if request.gpus < 1:
        raise MimError(f"-gpus must be at least 1, got {request.gpus}")
    if D.under_torchrun():
        _run_under_torchrun(request)
        return
    device = pick_device(request.device, request.gpus)
    launch(settings_for(request, request.gpus, device), resume=request.resume)


def _run_under_torchrun(request: RunRequest) -> None:
    """Rank 0 prepares the data and resolves the settings while the others wait; then all train."""
    import torch.distributed as dist

    from .engine import launch

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    device = request.device or ("cuda" if D.visible_gpus() else "cpu")
    D.init_group(rank, world, device, always=True)
    try:
        waiting = dist.new_group(backend="gloo", timeout=timedelta(seconds=D.DIST_PREPARE_TIMEOUT_S))
        message = [None]
        if rank == 0:
            try:
                message = [{"settings": settings_for(request, world, device).to_dict()}]
            except MimError as exc:
                message = [{"error": str(exc)}]
        dist.broadcast_object_list(message, src=0, group=waiting)
        if "error" in message[0]:
            raise MimError(message[0]["error"] if rank == 0 else "rank 0 could not prepare the run (see its error)")
        settings = RunSettings.from_dict(message[0]["settings"])
        D.check_shared_paths(written_by_rank0(settings, request.resume), group=waiting)
        launch(settings, resume=request.resume)
    finally:
        D.close_group()
