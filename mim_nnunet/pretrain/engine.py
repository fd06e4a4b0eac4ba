"""The pre-training loop of one rank, and :func:`launch`, which runs it on 1 or N processes.

One optimiser step = ``accumulation`` micro-batches of ``per_device_batch`` L1 crops on each rank.
Micro-batch m of step s on rank r is global batch ``(s * A + m) * W + r``; its crops and its masks are
drawn from generators seeded with (seed, global batch), so the data of a step depends only on the
effective batch, not on how it is split across devices and accumulation, and a resumed run sees the
same data as an uninterrupted one. On the CPU (fp32, the same processes and threads) a resumed run ends
with bit-identical weights; on GPUs the data, schedule and state are the same but kernels' summation
order is not (cuDNN's choices, atomic adds in indexing backward passes; ``--deterministic`` asks for
deterministic kernels), so results agree to rounding (docs/gpu.md).

A run is five parts: :func:`build` (model, optimiser, schedule, scaler), :func:`restore` (a checkpoint's
state, or the same start on every rank), :func:`train_step` (one optimiser step), :func:`verify_ranks`
(every rank's RNG and proof that ranks agree) and :func:`finish` (export, or say how to continue).
"""

from __future__ import annotations

import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch

from ..common.errors import MimError
from ..common.hashing import tensor_sha1 as digest
from ..common.layout import CHECKPOINT, export_path
from ..data.loader import global_batch_index, make_indexed_loader
from ..data.preprocess import stored_case_ids
from ..mim.model import MiM, build_mim
from ..optim import WarmupCosineLR, build_adamw
from . import distributed as D
from .checkpoint import (
    capture_rng,
    export_run,
    load_checkpoint,
    restore_rng,
    save_checkpoint,
)
from .logbook import Logbook
from .settings import RunSettings
from .validation import ValidationSet, picture_levels, validation_summary

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
MASK_STREAM = 1   # separates the mask generator's seed from the crop generator's
# Fault injection for tests and drills: "RANK:STEP" makes that rank raise at that step.
FAULT_INJECTION_ENV = "MIM_PRETRAIN_FAIL_AT"


def mask_seed(seed: int, global_batch: int) -> int:
    """Seed of the masking generator of one global batch (a pure function, so resume is exact)."""
    return int(np.random.SeedSequence([seed, global_batch, MASK_STREAM]).generate_state(1, np.uint64)[0] >> 1)


def injected_failure_step(rank: int) -> Optional[int]:
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


@dataclass
class Trainee:
    """What one rank trains: the model (its encoder and decoder compiled with ``compile``), how it is
    optimised."""

    model: MiM
    optimizer: torch.optim.Optimizer
    scheduler: WarmupCosineLR
    scaler: torch.amp.GradScaler

    @property
    def params(self) -> List[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]


def build(settings: RunSettings, device: torch.device) -> Trainee:
    """The model (seeded: the same initial weights on every rank) and its optimiser, schedule and scaler."""
    _seed_everything(settings.seed)
    try:
        model = build_mim(settings.backbone, settings.size, settings.config, settings.backbone_sizes,
                          **({"use_checkpoint": True} if settings.checkpointing else {})).to(device)
    except ValueError as exc:         # sizes the backbone cannot take (e.g. -input_size too small for resenc)
        raise MimError(f"{settings.backbone} '{settings.size}': {exc}") from None
    if settings.compile:
        compile_parts(model)
    # fused AdamW: one kernel over all parameters (on the CPU too: 0.041 s instead of 0.110 s per step for
    # hybrid base's 90 M parameters, scripts/benchmark_pretrain_step.py --optimizer; docs/benchmarks.md)
    optimizer = build_adamw(model, settings.lr, settings.weight_decay, settings.betas, fused=True)
    return Trainee(model=model, optimizer=optimizer,
                   scheduler=WarmupCosineLR(optimizer, settings.steps, settings.warmup_steps),
                   scaler=torch.amp.GradScaler(device.type, enabled=settings.precision == "fp16"))


def compile_parts(model: MiM, **options) -> MiM:
    """``torch.compile`` the encoder and the MAE decoder in place (``options``: its arguments, e.g. a
    ``backend``) and return the model. In place, not a wrapper: the chunked step calls the two directly,
    and parameter names (checkpoints, exports) stay those of the plain model. The geometry and the losses
    stay eager: they are cheap, and the masks' data-dependent shapes would break the graphs anyway."""
    model.encoder.compile(**options)
    model.decoder.compile(**options)
    return model


def restore(trainee: Trainee, settings: RunSettings, resume: bool, rank: int, world: int) -> int:
    """Steps already done: a checkpoint's state when resuming (its RNG for this rank when the device count
    is the same), else 0 with rank 0's weights on every rank and a per-rank RNG stream."""
    if not resume:
        D.broadcast_module_(trainee.model)
        _seed_everything(settings.seed + 1 + rank)   # ranks' own streams (dropout etc.), saved in checkpoints
        return 0
    # verified again here (its integrity record); whether a file without one may be used was decided before
    # the launch (mim_nnunet.pretrain.run.settings_for, --accept_unverified)
    state = load_checkpoint(Path(settings.out_dir) / CHECKPOINT, accept_unverified=True)
    trainee.model.load_state_dict(state["model"])
    trainee.optimizer.load_state_dict(state["optimizer"])
    if trainee.scaler.is_enabled() and state["scaler"]:   # a disabled scaler saved {} (bf16, fp32 runs)
        trainee.scaler.load_state_dict(state["scaler"])
    if len(state["rng"]) == world:
        restore_rng(state["rng"][rank])
    return int(state["step"])


def autocast_for(settings: RunSettings, device: torch.device) -> Dict:
    """``torch.autocast``'s arguments for the run's precision (disabled for fp32)."""
    return dict(device_type=device.type, dtype=AUTOCAST_DTYPES.get(settings.precision, torch.float32),
                enabled=settings.precision in AUTOCAST_DTYPES)


def configure_backends(device: torch.device, deterministic: bool) -> None:
    """On CUDA, as nnU-Net trains: cuDNN picks its fastest kernels for the step's fixed shapes
    (``cudnn.benchmark``) and fp32 matmuls and convolutions may use TF32 (they run under autocast anyway);
    ``deterministic`` (``--deterministic``) instead asks for deterministic kernels (cuDNN, cuBLAS's
    workspace, ``torch.use_deterministic_algorithms``; ops without one warn, they do not stop the run).
    On the CPU nothing changes: its kernels are deterministic at a fixed thread count."""
    if device.type != "cuda":
        return
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")   # read when cuBLAS starts: before the first matmul
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = not deterministic
    torch.backends.cudnn.allow_tf32 = not deterministic
    torch.set_float32_matmul_precision("highest" if deterministic else "high")


def train_step(trainee: Trainee, batches: Iterator[torch.Tensor], step: int, settings: RunSettings, rank: int,
               world: int, device: torch.device) -> Tuple[Dict, Dict, torch.Tensor]:
    """Optimiser step ``step`` (0-based): forward/backward of every micro-batch, one all-reduce, the update.
    With ``settings.chunk``, each micro-batch runs in chunks of at most that many sub-volumes, each
    back-propagated before the next (:meth:`MiM.forward_backward`: the same gradients, less memory).

    Returns the step's log record, the last micro-batch's model output and its crops."""
    out, accum = Path(settings.out_dir), settings.accumulation
    autocast = autocast_for(settings, device)
    trainee.scheduler.step(step)
    t_step, waited, sums, subvolumes = time.perf_counter(), 0.0, None, 0
    for m in range(accum):
        t = time.perf_counter()
        crops = next(batches).to(device, non_blocking=True)
        waited += time.perf_counter() - t
        g = global_batch_index(step * accum + m, rank, world)
        generator = torch.Generator(device=device).manual_seed(mask_seed(settings.seed, g))
        if settings.chunk:       # forward and backward chunk by chunk of sub-volumes (same gradients)
            result = trainee.model.forward_backward(crops, lambda loss: trainee.scaler.scale(loss).backward(),
                                                    settings.chunk, generator=generator,
                                                    progress=step / settings.steps,
                                                    autocast=lambda: torch.autocast(**autocast))
        else:
            with torch.autocast(**autocast):
                result = trainee.model(crops, generator=generator, progress=step / settings.steps)
            trainee.scaler.scale(result["loss"]).backward()
        values = torch.stack([result["loss"].detach().float()] + [v.detach().float() for v in result["terms"].values()])
        sums = values if sums is None else sums + values
        subvolumes += sum(lv["inputs"].shape[0] for lv in result["levels"])
    # mean over micro-batches and ranks: one all-reduce per step for gradients and logged losses
    params = trainee.params
    D.all_reduce_mean_([p.grad for p in params if p.grad is not None] + [sums], world * accum)
    trainee.scaler.unscale_(trainee.optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(params, settings.clip_grad or math.inf)
    if not torch.isfinite(grad_norm) and not trainee.scaler.is_enabled():   # fp16's scaler skips such steps
        raise MimError(f"gradient norm is {float(grad_norm)} at step {step + 1}; the run stops before the "
                       f"weights are spoilt (last good checkpoint: {out / CHECKPOINT})")
    trainee.scaler.step(trainee.optimizer)
    trainee.scaler.update()
    trainee.optimizer.zero_grad(set_to_none=True)

    seconds = time.perf_counter() - t_step
    record = {"step": step + 1, "loss": float(sums[0]),
              **{k: float(v) for k, v in zip(result["terms"], sums[1:])},
              **{f"weight_{k}": float(w) for k, w in result["weights"].items()},
              "lr": trainee.optimizer.param_groups[0]["lr"], "grad_norm": float(grad_norm),
              "subvolumes_per_s": subvolumes * world / seconds, "data_wait_fraction": waited / seconds,
              "seconds": seconds}
    if not math.isfinite(record["loss"]):
        raise MimError(f"loss is {record['loss']} at step {step + 1}; the run stops (last good checkpoint: "
                       f"{out / CHECKPOINT})")
    return record, result, crops


def verify_ranks(model: torch.nn.Module, crops: torch.Tensor, record: Dict, settings: RunSettings) -> List[Dict]:
    """Every rank's RNG state (for the checkpoint) and proof, written into ``record``, that ranks hold the
    same weights and trained on different crops; stops the run when the weights differ."""
    shared = D.gather_objects({"rng": capture_rng(), "weights": digest(model.state_dict().values()),
                               "crops": digest([crops])})
    record["rank_weights_sha1"] = [r["weights"] for r in shared]
    record["rank_crops_sha1"] = [r["crops"] for r in shared]
    if len(set(record["rank_weights_sha1"])) != 1:
        raise MimError(f"ranks hold different weights at step {record['step']}; the run stops (last good "
                       f"checkpoint: {Path(settings.out_dir) / CHECKPOINT})")
    return [r["rng"] for r in shared]


def validate(trainee: Trainee, validation: ValidationSet, step: int, device: torch.device, log: Logbook) -> None:
    """The validation reconstruction loss per level after ``step`` steps, into the log (rank 0 only)."""
    values = validation.evaluate(trainee.model, device, autocast_for(validation.settings, device))
    log.validation({"step": step, **values, "crops": validation.settings.val_crops,
                    "held_out_cases": len(validation.settings.val_cases)})


def finish(model: MiM, settings: RunSettings, stop: int, log: Logbook,
           device_names: Optional[List[str]] = None) -> None:
    """At the end of the run, the encoder's export (its record carries the validation loss); at
    ``-stop_at``, how to continue."""
    if stop < settings.steps:
        log.text(f"stopped at step {stop} of {settings.steps} (-stop_at); continue with --c")
        return
    weights, _ = export_run(model.encoder, settings, settings.steps,
                            export_path(Path(settings.out_dir), settings.backbone, settings.size),
                            validation=validation_summary(log.records), records=log.records,
                            device_names=device_names)
    log.text(f"done: {settings.steps} steps; encoder exported to {weights}")


def train_rank(rank: int, world_size: int, payload: Dict) -> None:
    """Entry point of one rank (spawned, under torchrun, or the only process)."""
    settings = RunSettings.from_dict(payload["settings"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    device = D.local_device(settings.device, local_rank)
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
    threads = D.rank_cpu_threads(settings.cpu_threads, device.type, local_world, settings.loader_workers)
    if threads is not None:
        torch.set_num_threads(threads)
    configure_backends(device, settings.deterministic)
    joined_here = not torch.distributed.is_initialized()
    if joined_here:
        D.init_group(rank, world_size, settings.device)
    try:
        _train(rank, world_size, device, settings, payload["resume"])
    finally:
        if joined_here:
            D.close_group()


def _describe(settings: RunSettings, start: int, resume: bool, world: int, device: torch.device) -> str:
    if start >= settings.steps:
        return f"the run finished at step {start} of {settings.steps} already; exporting again"
    if resume:
        return f"resumed at step {start} of {settings.steps} from {Path(settings.out_dir) / CHECKPOINT}"
    return (f"pre-training {settings.backbone} '{settings.size}' for {settings.steps} steps on {world} "
            f"{device.type} process(es): {settings.per_device_batch} crop(s) x {settings.accumulation} "
            f"accumulation x {world} = {settings.effective_batch_crops} crops per step"
            f"{f' (sub-volumes in chunks of {settings.chunk})' if settings.chunk else ''}, "
            f"S = {list(settings.config.input_size)}, lr {settings.lr:.3g}, {settings.precision}"
            f"{', activation checkpointing' if settings.checkpointing else ''}"
            f"{', compiled encoder and decoder' if settings.compile else ''}"
            f"{f', {torch.get_num_threads()} CPU thread(s) per process' if device.type == 'cpu' else ''}")


def _train(rank: int, world: int, device: torch.device, settings: RunSettings, resume: bool) -> None:
    trainee = build(settings, device)
    start = restore(trainee, settings, resume, rank, world)
    config, out = settings.config, Path(settings.out_dir)
    log = Logbook(out, settings.steps, start, rank == 0, settings.log_every, settings.plot_every,
                  settings.recon_every, config.norm_pix_loss, config.grid)
    log.text(_describe(settings, start, resume, world, device))
    stop, fail_at = settings.stop_at or settings.steps, injected_failure_step(rank)
    training_cases = sorted(set(stored_case_ids(Path(settings.store))) - set(settings.val_cases))
    batches = iter(make_indexed_loader(settings.store, config.l1_crop_size, settings.per_device_batch,
                                       start=start * settings.accumulation, num_workers=settings.loader_workers,
                                       seed=settings.seed, rank=rank, world_size=world, case_ids=training_cases,
                                       uniform_fraction=settings.uniform_crop_fraction)) if start < stop else None
    validation = ValidationSet(settings) if rank == 0 and settings.val_crops > 0 else None
    device_names = D.gather_objects(D.device_name(device))      # every rank's device, for the export record
    try:
        if validation is not None and start == 0 < stop:
            validate(trainee, validation, 0, device, log)
        for step in range(start, stop):
            if fail_at == step:
                raise MimError(f"injected failure on rank {rank} at step {step} (${FAULT_INJECTION_ENV})")
            record, result, crops = train_step(trainee, batches, step, settings, rank, world, device)
            due = record["step"] % settings.save_every == 0 or record["step"] == stop
            rngs = verify_ranks(trainee.model, crops, record, settings) if due else None
            if validation is not None and (record["step"] % settings.val_every == 0
                                           or record["step"] == settings.steps):
                validate(trainee, validation, record["step"], device, log)
            if rank == 0 and (record["step"] % settings.recon_every == 0 or record["step"] == stop):
                pictured = picture_levels(validation, trainee.model, device,
                                          autocast_for(settings, device)) if validation else result["levels"]
            else:
                pictured = None
            log.step(record, pictured)
            if due and rank == 0:
                save_checkpoint(out / CHECKPOINT, model=trainee.model, optimizer=trainee.optimizer,
                                scaler=trainee.scaler, step=record["step"], settings=settings.to_dict(), rng=rngs)
        if rank == 0:
            finish(trainee.model, settings, stop, log, device_names)
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
