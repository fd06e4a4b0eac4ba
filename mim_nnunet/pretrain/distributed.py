"""Process groups for pre-training: spawn N local ranks, or join the group ``torchrun`` gives.

Gradients are averaged by hand once per optimiser step (after accumulation), in flat buckets: one
all-reduce per step instead of one per micro-batch, and parameters a configuration leaves unused
(e.g. swin's last stage) need no special handling. A rank that fails ends the job: spawned ranks are
watched by the parent, which stops the others and reports the first failure.
"""

from __future__ import annotations

import io
import os
import socket
import time
from datetime import timedelta
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ..common.errors import MimError, last_line
from ..common.host import threads_from_environment, usable_cores

DIST_TIMEOUT_S = 1800            # a collective that waits longer than this fails (a peer is gone)
DIST_PREPARE_TIMEOUT_S = 72 * 3600   # under torchrun, ranks > 0 wait this long for rank 0's preprocessing
DIST_BUCKET_ELEMENTS = 2 ** 24   # gradients are all-reduced in flat buckets of this many elements
SHARED_PATH_WAIT_S = 60          # how long a rank waits to see rank 0's files (network filesystem caches)
TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def under_torchrun() -> bool:
    """True when launched by ``torchrun`` (or any launcher that sets the env:// variables)."""
    return all(v in os.environ for v in TORCHRUN_VARS)


def backend_for(device: str) -> str:
    return "nccl" if device == "cuda" else "gloo"


def init_group(rank: int, world_size: int, device: str, timeout_s: float = DIST_TIMEOUT_S,
               always: bool = False) -> None:
    """Join the default group (env://); a no-op for a single process unless ``always`` (under torchrun the
    group exists at every world size, 1 included, so the code after it can use collectives alike)."""
    if world_size > 1 or always:
        dist.init_process_group(backend_for(device), rank=rank, world_size=world_size,
                                timeout=timedelta(seconds=timeout_s))


def close_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_mean_(tensors: Sequence[torch.Tensor], divisor: float) -> None:
    """In place: ``t <- sum over ranks of t / divisor``, in flat buckets of ``DIST_BUCKET_ELEMENTS``."""
    bucket: List[torch.Tensor] = []
    size = 0

    def flush():
        nonlocal bucket, size
        if not bucket:
            return
        flat = torch.cat([t.reshape(-1) for t in bucket])
        if dist.is_initialized():
            dist.all_reduce(flat)
        flat /= divisor
        offset = 0
        for t in bucket:
            t.copy_(flat[offset:offset + t.numel()].view_as(t))
            offset += t.numel()
        bucket, size = [], 0

    for t in tensors:
        bucket.append(t)
        size += t.numel()
        if size >= DIST_BUCKET_ELEMENTS:
            flush()
    flush()


def broadcast_module_(module: torch.nn.Module) -> None:
    """Every rank starts from rank 0's parameters and buffers."""
    if dist.is_initialized():
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, src=0)


def gather_objects(obj) -> List:
    """``obj`` of every rank, in rank order (on every rank). Objects travel as ``torch.save`` bytes and
    are read back with ``weights_only=True`` (tensors inside plain containers, no pickled code)."""
    if not dist.is_initialized():
        return [obj]
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    out: List = [None] * dist.get_world_size()
    dist.all_gather_object(out, buffer.getvalue())
    return [torch.load(io.BytesIO(b), weights_only=True) for b in out]


def device_name(device: torch.device) -> str:
    """What this rank trains on, for the export record: the GPU's name, or the CPU's model."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor() or "CPU (model not reported by the system)"


def check_shared_paths(paths: Sequence, group=None, wait_s: float = SHARED_PATH_WAIT_S) -> None:
    """Every rank checks that it sees ``paths`` (written by rank 0), waiting up to ``wait_s`` for them (a
    network filesystem may show another node's new files with a delay); when one does not, every rank
    stops with the same one-line error naming the rank, its host and the first path it cannot see. Ranks
    on other nodes see rank 0's files only through a filesystem shared at the same path."""
    from pathlib import Path
    deadline = time.monotonic() + wait_s
    while True:
        missing = [str(p) for p in paths if not Path(p).exists()]
        if not missing or time.monotonic() >= deadline:
            break
        time.sleep(1.0)
    mine = {"host": socket.gethostname(), "missing": missing}
    everyone: List = [None] * dist.get_world_size(group) if dist.is_initialized() else [None]
    if dist.is_initialized():
        dist.all_gather_object(everyone, mine, group=group)
    else:
        everyone = [mine]
    for rank, seen in enumerate(everyone):
        if seen["missing"]:
            raise MimError(f"rank {rank} on {seen['host']} cannot see {seen['missing'][0]}, written by rank 0 on "
                           f"{everyone[0]['host']}: every node of a run needs nnUNet_preprocessed and "
                           f"nnUNet_results on a filesystem shared at the same path (see docs/gpu.md)")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawned(rank: int, fn: Callable, world_size: int, port: int, payload: Dict) -> None:
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world_size)})
    fn(rank, world_size, payload)


def spawn(fn: Callable, world_size: int, payload: Dict, poll_s: float = 1.0) -> None:
    """Run ``fn(rank, world_size, payload)`` in ``world_size`` fresh processes and wait for all of them.

    The first rank that raises or dies makes the others stop, and its error is raised here as one
    line (``rank R failed: ...``) so the command exits non-zero instead of hanging.
    """
    context = mp.start_processes(_spawned, args=(fn, world_size, free_port(), payload), nprocs=world_size,
                                 join=False, start_method="spawn")
    try:
        while not context.join(timeout=poll_s):
            pass
    except mp.ProcessRaisedException as exc:
        raise MimError(f"rank {exc.error_index} failed: {last_line(str(exc))}") from None
    except mp.ProcessExitedException as exc:
        raise MimError(f"rank {exc.error_index} died (exit code {exc.exit_code}"
                       f"{', signal ' + exc.signal_name if exc.signal_name else ''}); the other ranks were stopped") \
            from None
    finally:
        for p in context.processes:
            if p.is_alive():
                p.terminate()


def gpu_index(local_rank: int, visible: int) -> int:
    """The GPU of local rank ``local_rank`` among the ``visible`` ones: its own index when every local
    rank's GPU is visible (``-num_gpus N``, torchrun on a node), 0 when the launcher shows each process its
    own single GPU (SLURM ``--gpus-per-task=1``, a ``CUDA_VISIBLE_DEVICES`` per rank)."""
    if visible == 1:
        return 0
    if local_rank < visible:
        return local_rank
    raise MimError(f"local rank {local_rank} needs GPU {local_rank}, but this process sees {visible} GPU(s): "
                   f"show each process all of the node's GPUs, or exactly one")


def local_device(device: str, local_rank: int) -> torch.device:
    """``cuda:<index>`` (:func:`gpu_index`, made the current device) or the CPU."""
    if device == "cuda":
        count = torch.cuda.device_count()
        if count < 1:
            raise MimError(f"rank {local_rank} was started for a GPU, but no GPU is visible to it")
        index = gpu_index(local_rank, count)
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    return torch.device("cpu")


def visible_gpus() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def cpu_threads_per_rank(world_size: int, loader_workers: int = 0, cores: Optional[int] = None) -> int:
    """Compute threads per local rank: the cores left after every rank's loader workers, split between the
    ranks, at least one. Counting a core per loader worker leaves a core free for the workers' reads: with
    compute threads on every core, a worker (or any other process) that takes a core stalls the others at
    each parallel region (on 2 cores, one process beside the demo's pre-training cut its throughput 5-10x)."""
    cores = cores or usable_cores()
    world = max(1, world_size)
    return max(1, (cores - world * max(0, loader_workers)) // world)


def rank_cpu_threads(requested: Optional[int], device_type: str, local_world: int,
                     loader_workers: int) -> Optional[int]:
    """torch's CPU threads for a rank (None: leave them): ``-threads`` when given; on the CPU ``$MIM_CPU_THREADS``,
    else :func:`cpu_threads_per_rank`; a GPU rank keeps torchrun's ``OMP_NUM_THREADS`` and otherwise takes its
    share of the cores (its CPU threads feed its GPU, no core is left to loader workers)."""
    if requested:
        return requested
    if device_type == "cpu":
        return threads_from_environment() or cpu_threads_per_rank(local_world, loader_workers)
    return None if "OMP_NUM_THREADS" in os.environ else cpu_threads_per_rank(local_world, 0)
