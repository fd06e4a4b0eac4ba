"""The pre-training loop of one rank, and :func:`launch`, which runs it on 1 or N processes.

One optimiser step = ``accumulation`` micro-batches of ``per_device_batch`` L1 crops on each rank.
Micro-batch m of step s on rank r is global batch ``(s * A + m) * W + r``; its crops and its masks are
drawn from generators seeded with (seed, global batch), so the data of a step depends only on the
effective batch, not on how it is split across devices and accumulation, and a resumed run sees the
same data as an uninterrupted one.
"""

from __future__ import annotations

import math
import os
import random
import time
from pathlib import Path
from typing import Dict

import numpy as np
import torch

from ..data.loader import global_batch_index, make_indexed_loader
from ..defaults import FAULT_INJECTION_ENV
from ..errors import MimError
from ..hashing import tensor_sha1 as digest
from ..mim.model import build_mim
from ..optim import build_adamw
from ..schedules import WarmupCosineLR
from . import distributed as D
from .checkpoint import LATEST, capture_rng, load_checkpoint, restore_rng, save_checkpoint
from .exporting import EXPORT_DIR, export_name, export_run
from .logbook import Logbook
from .settings import RunSettings

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
MASK_STREAM = 1   # separates the mask generator's seed from the crop generator's


def mask_seed(seed: int, global_batch: int) -> int:
    """Seed of the masking generator of one global batch (a pure function, so resume is exact)."""
    return int(np.random.SeedSequence([seed, global_batch, MASK_STREAM]).generate_state(1, np.uint64)[0] >> 1)


def injected_failure_step(rank: int):
    """The step at which this rank must fail, from ``$MIM_PRETRAIN_FAIL_AT`` = ``RANK:STEP`` (tests, drills)."""
    spec = os.environ.get(FAULT_INJECTION_ENV, "")
    if ":" in spec:
        r, s = spec.split(":", 1)
        if int(r) == rank:
            return int(s)
    return None


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def train_rank(rank: int, world_size: int, payload: Dict) -> None:
    """Entry point of one rank (spawned, under torchrun, or the only process)."""
    settings = RunSettings.from_dict(payload["settings"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    device = D.local_device(settings.device, local_rank)
    if device.type == "cpu":
        torch.set_num_threads(settings.cpu_threads
                              or D.cpu_threads_per_rank(int(os.environ.get("LOCAL_WORLD_SIZE", world_size))))
    joined_here = not torch.distributed.is_initialized()
    if joined_here:
        D.init_group(rank, world_size, settings.device)
    try:
        _train(rank, world_size, device, settings, payload["resume"])
    finally:
        if joined_here:
            D.close_group()


def _train(rank: int, world: int, device: torch.device, settings: RunSettings, resume: bool) -> None:
    out = Path(settings.out_dir)
    config = settings.config
    _seed_everything(settings.seed)            # the same initial weights on every rank
    model = build_mim(settings.backbone, settings.size, config).to(device)
    optimizer = build_adamw(model, settings.lr, settings.weight_decay, settings.betas)
    scheduler = WarmupCosineLR(optimizer, settings.steps, settings.warmup_steps)
    scaler = torch.amp.GradScaler(device.type, enabled=settings.precision == "fp16")
    start = 0
    if resume:
        state = load_checkpoint(out / LATEST)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        start = int(state["step"])
        if len(state["rng"]) == world:
            restore_rng(state["rng"][rank])
        del state
    else:
        D.broadcast_module_(model)
        _seed_everything(settings.seed + 1 + rank)   # ranks' own streams (dropout etc.), saved in checkpoints

    log = Logbook(out, settings.steps, start, rank == 0, settings.log_every, settings.plot_every,
                  settings.recon_every, config.norm_pix_loss, config.grid)
    stop = settings.stop_at or settings.steps
    if start >= settings.steps:
        log.text(f"the run finished at step {start} of {settings.steps} already; exporting again")
    elif resume:
        log.text(f"resumed at step {start} of {settings.steps} from {out / LATEST}")
    else:
        log.text(f"pre-training {settings.backbone} '{settings.size}' for {settings.steps} steps on {world} "
                 f"{device.type} process(es): {settings.per_device_batch} crop(s) x {settings.accumulation} "
                 f"accumulation x {world} = {settings.effective_batch_crops} crops per step, "
                 f"S = {list(config.input_size)}, lr {settings.lr:.3g}, {settings.precision}")

    forward = torch.compile(model) if settings.compile else model
    params = [p for p in model.parameters() if p.requires_grad]
    autocast = dict(device_type=device.type, dtype=AUTOCAST_DTYPES.get(settings.precision, torch.float32),
                    enabled=settings.precision in AUTOCAST_DTYPES)
    accum = settings.accumulation
    subvolumes_per_step = None
    fail_at = injected_failure_step(rank)
    batches = iter(make_indexed_loader(settings.store, config.l1_crop_size, settings.per_device_batch,
                                       start=start * accum, num_workers=settings.loader_workers,
                                       seed=settings.seed, rank=rank, world_size=world)) if start < stop else None
    try:
        for step in range(start, stop):
            if fail_at == step:
                raise MimError(f"injected failure on rank {rank} at step {step} (${FAULT_INJECTION_ENV})")
            scheduler.step(step)
            t_step, waited, sums = time.perf_counter(), 0.0, None
            for m in range(accum):
                t = time.perf_counter()
                crops = next(batches).to(device, non_blocking=True)
                waited += time.perf_counter() - t
                g = global_batch_index(step * accum + m, rank, world)
                generator = torch.Generator(device=device).manual_seed(mask_seed(settings.seed, g))
                with torch.autocast(**autocast):
                    result = forward(crops, generator=generator, progress=step / settings.steps)
                scaler.scale(result["loss"]).backward()
                values = torch.stack([result["loss"].detach().float()]
                                     + [v.detach().float() for v in result["terms"].values()])
                sums = values if sums is None else sums + values
                if subvolumes_per_step is None:
                    subvolumes_per_step = sum(lv["inputs"].shape[0] for lv in result["levels"]) * accum * world
            # mean over micro-batches and ranks: one all-reduce per step for gradients and logged losses
            D.all_reduce_mean_([p.grad for p in params if p.grad is not None] + [sums], world * accum)
            scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(params, settings.clip_grad or math.inf)
            if not torch.isfinite(grad_norm) and not scaler.is_enabled():   # fp16's scaler skips such steps
                raise MimError(f"gradient norm is {float(grad_norm)} at step {step + 1}; the run stops before the "
                               f"weights are spoilt (last good checkpoint: {out / LATEST})")
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)

            done = step + 1
            seconds = time.perf_counter() - t_step
            record = {"step": done, "loss": float(sums[0]),
                      **{k: float(v) for k, v in zip(result["terms"], sums[1:])},
                      **{f"weight_{k}": float(w) for k, w in result["weights"].items()},
                      "lr": optimizer.param_groups[0]["lr"], "grad_norm": float(grad_norm),
                      "subvolumes_per_s": subvolumes_per_step / seconds, "data_wait_fraction": waited / seconds,
                      "seconds": seconds}
            if not math.isfinite(record["loss"]):
                raise MimError(f"loss is {record['loss']} at step {done}; the run stops (last good checkpoint: "
                               f"{out / LATEST})")
            due = done % settings.save_every == 0 or done == stop
            if due:   # every rank's RNG, and proof that ranks agree on the weights and differ in data
                shared = D.gather_objects({"rng": capture_rng(), "weights": digest(model.state_dict().values()),
                                           "crops": digest([crops])})
                record["rank_weights_sha1"] = [r["weights"] for r in shared]
                record["rank_crops_sha1"] = [r["crops"] for r in shared]
                if len(set(record["rank_weights_sha1"])) != 1:
                    raise MimError(f"ranks hold different weights at step {done}; the run stops (last good "
                                   f"checkpoint: {out / LATEST})")
            log.step(record, result["levels"] if rank == 0 else None)
            if due and rank == 0:
                save_checkpoint(out / LATEST, model=model, optimizer=optimizer, scaler=scaler, step=done,
                                settings=settings.to_dict(), rng=[r["rng"] for r in shared])
        if rank == 0:
            if stop < settings.steps:
                log.text(f"stopped at step {stop} of {settings.steps} (-stop_at); continue with --c")
            else:
                weights, _ = export_run(model.encoder, settings, settings.steps,
                                        out / EXPORT_DIR / export_name(settings.backbone, settings.size))
                log.text(f"done: {settings.steps} steps; encoder exported to {weights}")
    finally:
        log.close()


def launch(settings: RunSettings, resume: bool) -> None:
    """Run the pre-training: in this process (1 rank), in ``world_size`` spawned processes, or as this
    rank of a ``torchrun`` job (the group must already be initialised by the caller)."""
    payload = {"settings": settings.to_dict(), "resume": resume}
    if torch.distributed.is_initialized():
        train_rank(torch.distributed.get_rank(), torch.distributed.get_world_size(), payload)
    elif settings.world_size == 1:
        train_rank(0, 1, payload)
    else:
        D.spawn(train_rank, settings.world_size, payload)
