"""``mim_pretrain``: MiM pre-training end to end: fingerprint, pre-training plan, preprocess, pre-train, export.

Results go to $nnUNet_results/MiM_<name>/<backbone>_<size>[_<run>]/: checkpoint_latest.pt, settings.json,
log.txt, log.jsonl, progress.png, reconstructions/, export/mim_<backbone>_<size>.safetensors (+ .json).
Launched under torchrun, each process joins the group torchrun gives instead of spawning -num_gpus.
"""

from __future__ import annotations

import argparse
import functools
import sys
from typing import Dict, List, Optional

from ..mim.config import ALIGN_DIM_BY_SIZE, MIM_SWITCHES
from ..mim.losses import LEVEL_WEIGHT_SCHEDULES
from ..pretrain.settings import (
    DEFAULT_LOADER_WORKERS,
    PRETRAIN_INTERVALS,
    PRETRAIN_DEFAULTS,
    VALIDATION_CROPS,
)
from . import run_guarded
from .flags import add_flag
from .plan import add_data_arguments, check_size, prepare_from

# Help for every MiM switch (docs/method.md); the flag is the switch's name with one dash.
SWITCH_HELP = {
    "levels": "1 = plain MAE3D, 2 = stop after L2, 3 = full MiM",
    "r1": "fraction of the 8 L1 units masked",
    "r2": "fraction of L2 tokens masked",
    "r3": "fraction of L3 tokens masked",
    "gamma2": "L2 volumes cut from each L1 volume",
    "gamma3": "L3 volumes cut from each L2 volume",
    "next_level_from": "cut the next level from masked or visible regions (Table 11)",
    "norm_pix_loss": "normalise each target token (MAE's norm-pix loss)",
    "align_loss": "cross-level alignment loss (Table 12)",
    "align_pairs": "L1-L2 and L2-L3 alignment terms on/off (Table 10)",
    "detach_parent": "stop-gradient on parent features",
    "tau": "InfoNCE temperature",
    "align_dim": "output size of the alignment projections; the pre-training plan's is the paper's 2048 except per size "
                 + ", ".join(f"{size} {dim}" for size, dim in ALIGN_DIM_BY_SIZE.items()),
    "loss_weights": "b1..b5 of Eq. 10: L1, L2, L3 reconstruction, L1-L2, L2-L3 alignment",
    "level_weight_schedule": "reconstruction weights over training (Table 14)",
}
SWITCH_CHOICES = {"next_level_from": ("masked", "visible"), "align_loss": ("infonce", "byol"),
                  "level_weight_schedule": tuple(LEVEL_WEIGHT_SCHEDULES)}


def _bool(text: str) -> bool:
    if text.lower() in ("true", "1", "yes", "on"):
        return True
    if text.lower() in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def add_switch_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("MiM switches (ablations; default: the paper's value)")
    for name, default in MIM_SWITCHES.items():
        kwargs = {"default": None, "help": f"{SWITCH_HELP[name]} (default: {default})"}
        if isinstance(default, tuple):
            kwargs.update(nargs=len(default), type=_bool if isinstance(default[0], bool) else float)
        elif isinstance(default, bool):
            kwargs.update(type=_bool, metavar="true|false")
        elif name in SWITCH_CHOICES:
            kwargs.update(choices=SWITCH_CHOICES[name])
        else:
            kwargs.update(type=type(default))
        group.add_argument(f"-{name}", **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mim_pretrain", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_arguments(parser)
    run = parser.add_argument_group("training")
    add_flag(run, "-num_gpus", aliases=("-gpus",), type=int, default=1,
             help="local processes, one per GPU (with -device cpu: CPU processes talking through gloo) "
                  "(default: 1)")
    run.add_argument("-device", choices=("cuda", "cpu"), default=None,
                     help="default: cuda when a GPU is visible, else cpu (said on start)")
    run.add_argument("-steps", type=int, default=None,
                     help=f"optimiser steps of the run (default: {PRETRAIN_DEFAULTS['steps']}); the lr warm-up and "
                          f"cosine decay to 0 are laid over them, so --c continues a run with its own steps and "
                          f"refuses another -steps (a finished run is not extended: start a longer one with "
                          f"-steps N -run NAME)")
    run.add_argument("--c", action="store_true", help="continue the run in the results folder from its last "
                                                      "checkpoint, as it would have gone on (bit for bit on the "
                                                      "CPU; on GPUs to rounding, docs/gpu.md)")
    run.add_argument("--accept_unverified", action="store_true",
                     help="with --c: continue from a checkpoint that carries no integrity record and has no "
                          ".sha256.json beside it (an older version's file copied alone), as it is")
    run.add_argument("-stop_at", type=int, default=None,
                     help="stop (with a checkpoint) after this many steps of the run; continue later with --c")
    run.add_argument("-run", default=None, help="suffix of the results folder, to keep ablations apart")
    run.add_argument("-input_size", type=int, nargs="+", default=None,
                     help="S (1 or 3 values, multiples of 32) instead of the pre-training plan's")
    run.add_argument("-batch", type=int, default=None, help="L1 crops per device and micro-batch (default: the pre-training plan's)")
    run.add_argument("-accum", type=int, default=None, help="micro-batches accumulated per step (default: the pre-training plan's)")
    run.add_argument("-chunk", type=int, default=None,
                     help="sub-volumes per forward/backward pass: each level runs in chunks of at most this many, "
                          "each back-propagated before the next; same gradients up to float rounding, peak "
                          "memory set by the chunk; 0 = all at once; may change on --c (default: the pre-training plan's)")
    run.add_argument("-lr", type=float, default=None, help="peak learning rate (default: 1e-4 x effective "
                                                           "sub-volumes / 256)")
    run.add_argument("-precision", choices=("auto", "bf16", "fp16", "fp32"), default="auto",
                     help="auto: bf16 where the GPU supports it, else fp16 with a loss scaler; fp32 on CPU")
    run.add_argument("-clip_grad", type=float, default=None, help="clip the gradient norm to this (default: off)")
    run.add_argument("--compile", action="store_true", default=None, help="torch.compile the model")
    run.add_argument("--checkpointing", action="store_true", default=None,
                     help="activation checkpointing of the backbone's blocks: the same gradients, less memory, "
                          "one more forward pass of each block; may change on --c (default: off, or the pre-training plan's "
                          "backbone_sizes.use_checkpoint)")
    run.add_argument("--deterministic", action="store_true", default=None,
                     help="on GPUs: deterministic kernels (cuDNN, cuBLAS, torch.use_deterministic_algorithms; no "
                          "cudnn.benchmark, no TF32), slower; the CPU is deterministic without it. See docs/gpu.md "
                          "for what is reproducible bit for bit; may change on --c")
    run.add_argument("-seed", type=int, default=None, help=f"default: {PRETRAIN_DEFAULTS['seed']}")
    run.add_argument("-workers", type=int, default=None,
                     help=f"data-loading workers per process (default: {DEFAULT_LOADER_WORKERS})")
    run.add_argument("-threads", type=int, default=None,
                     help="CPU threads per process with -device cpu (default: $MIM_CPU_THREADS, else (cores - "
                          "processes x -workers) / processes, at least 1)")
    run.add_argument("-val_crops", type=int, default=None,
                     help=f"fixed held-out crops of the validation loss, 0 = none (default: {VALIDATION_CROPS})")
    for name, value in PRETRAIN_INTERVALS.items():
        run.add_argument(f"-{name}", type=int, default=None, help=f"steps (default: {value})")
    add_switch_arguments(parser)
    return parser


def switches_from(args: argparse.Namespace) -> Dict:
    return {name: tuple(v) if isinstance(v, list) else v for name in MIM_SWITCHES
            if (v := getattr(args, name)) is not None}


def operational_from(args: argparse.Namespace) -> Dict:
    values = {"stop_at": args.stop_at, "loader_workers": args.workers, "compile": args.compile,
              "checkpointing": args.checkpointing, "deterministic": args.deterministic,
              "cpu_threads": args.threads, "val_crops": args.val_crops, "chunk": args.chunk,
              **{name: getattr(args, name) for name in PRETRAIN_INTERVALS}}
    return {k: v for k, v in values.items() if v is not None}


def request_from(args: argparse.Namespace):
    """The run the flags ask for (:class:`mim_nnunet.pretrain.run.RunRequest`)."""
    from ..pretrain.run import RunRequest
    return RunRequest(prepare=functools.partial(prepare_from, args), backbone=args.backbone, size=args.size,
                      gpus=args.num_gpus, device=args.device, resume=args.c, run=args.run,
                      accept_unverified=args.accept_unverified,
                      switches=switches_from(args), input_size=args.input_size, per_device_batch=args.batch,
                      accumulation=args.accum, steps=args.steps, lr=args.lr, precision=args.precision,
                      seed=args.seed, clip_grad=args.clip_grad, operational=operational_from(args))


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = check_size(parser, parser.parse_args(argv))

    def _run() -> int:
        from ..common.host import threads_from_environment
        from ..pretrain.run import run_pretraining
        threads_from_environment()          # a bad $MIM_CPU_THREADS in one line here, not from inside a rank
        run_pretraining(request_from(args))
        return 0
    return run_guarded(_run, "mim_pretrain")


if __name__ == "__main__":
    sys.exit(main())
