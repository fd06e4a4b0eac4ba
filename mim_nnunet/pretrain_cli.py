"""``mim_pretrain``: MiM pre-training end to end: fingerprint, plan, preprocess, pre-train, export.

Results go to $nnUNet_results/MiM_<name>/<backbone>_<size>[_<run>]/: checkpoint_latest.pt, log.txt,
log.jsonl, progress.png, reconstructions/, export/mim_<backbone>_<size>.safetensors (+ .json).
Launched under torchrun, each process joins the group torchrun gives instead of spawning -gpus.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Dict, List, Optional

from .cli import run_guarded
from .defaults import MIM_SWITCHES, PRETRAIN_INTERVALS, PRETRAIN_RECIPE
from .errors import MimError
from .plan_cli import add_data_arguments, run_prepare

# Help for every MiM switch (MIM_SPEC.md); the flag is the switch's name with one dash.
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
    "align_dim": "output size of the alignment projections",
    "loss_weights": "b1..b5 of Eq. 10: L1, L2, L3 reconstruction, L1-L2, L2-L3 alignment",
    "level_weight_schedule": "reconstruction weights over training (Table 14)",
}
SWITCH_CHOICES = {"next_level_from": ("masked", "visible"), "align_loss": ("infonce", "byol"),
                  "level_weight_schedule": ("concurrent", "coarse_to_fine", "fine_to_coarse")}


def _bool(text: str) -> bool:
    if text.lower() in ("true", "1", "yes", "on"):
        return True
    if text.lower() in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def add_switch_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("MiM switches (ablations; default: the spec's value)")
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
    run.add_argument("-gpus", type=int, default=1, help="local processes, one per GPU (with -device cpu: CPU "
                                                        "processes talking through gloo) (default: 1)")
    run.add_argument("-device", choices=("cuda", "cpu"), default=None,
                     help="default: cuda when a GPU is visible, else cpu (said on start)")
    run.add_argument("-steps", type=int, default=None,
                     help=f"optimiser steps of the run (default: {PRETRAIN_RECIPE['steps']})")
    run.add_argument("--c", action="store_true", help="continue the run in the results folder from its last "
                                                      "checkpoint, exactly as it would have gone on")
    run.add_argument("-stop_at", type=int, default=None,
                     help="stop (with a checkpoint) after this many steps of the run; continue later with --c")
    run.add_argument("-run", default=None, help="suffix of the results folder, to keep ablations apart")
    run.add_argument("-input_size", type=int, nargs="+", default=None,
                     help="S (1 or 3 values, multiples of 32) instead of the plan's")
    run.add_argument("-batch", type=int, default=None, help="L1 crops per device and micro-batch (default: plan)")
    run.add_argument("-accum", type=int, default=None, help="micro-batches accumulated per step (default: plan)")
    run.add_argument("-lr", type=float, default=None, help="peak learning rate (default: 1e-4 x effective "
                                                           "sub-volumes / 256)")
    run.add_argument("-precision", choices=("auto", "bf16", "fp16", "fp32"), default="auto",
                     help="auto: bf16 where the GPU supports it, else fp16 with a loss scaler; fp32 on CPU")
    run.add_argument("-clip_grad", type=float, default=None, help="clip the gradient norm to this (default: off)")
    run.add_argument("--compile", action="store_true", default=None, help="torch.compile the model")
    run.add_argument("-seed", type=int, default=None, help=f"default: {PRETRAIN_RECIPE['seed']}")
    run.add_argument("-workers", type=int, default=None, help="data-loading workers per process (default: 2)")
    run.add_argument("-threads", type=int, default=None,
                     help="CPU threads per process with -device cpu (default: cores / processes)")
    for name, value in PRETRAIN_INTERVALS.items():
        run.add_argument(f"-{name}", type=int, default=None, help=f"steps (default: {value})")
    add_switch_arguments(parser)
    return parser


def switches_from(args: argparse.Namespace) -> Dict:
    return {name: tuple(v) if isinstance(v, list) else v for name in MIM_SWITCHES
            if (v := getattr(args, name)) is not None}


def operational_from(args: argparse.Namespace) -> Dict:
    values = {"stop_at": args.stop_at, "loader_workers": args.workers, "compile": args.compile,
              "cpu_threads": args.threads,
              **{name: getattr(args, name) for name in PRETRAIN_INTERVALS}}
    return {k: v for k, v in values.items() if v is not None}


def pick_device(requested: Optional[str], gpus: int, log=print) -> str:
    from .pretrain.distributed import visible_gpus
    found = visible_gpus()
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


def results_folder(name: str, backbone: str, size: str, run: Optional[str]) -> Path:
    from .environment import require_nnunet_paths
    root = Path(require_nnunet_paths(("nnUNet_results",))["nnUNet_results"])
    return root / f"MiM_{name}" / (f"{backbone}_{size}" + (f"_{run}" if run else ""))


def settings_for(args: argparse.Namespace, world_size: int, device: str):
    """Prepare the data and resolve the run's settings (a new run, or the one --c continues)."""
    from .atomic import write_json_atomic
    from .pretrain.checkpoint import LATEST, load_checkpoint, remove_stale_temporaries
    from .pretrain.settings import continued_settings, resolve_settings

    prepared = run_prepare(args)
    out = results_folder(prepared.plan["name"], args.backbone, args.size, args.run)
    latest = out / LATEST
    for stale in remove_stale_temporaries(out):
        print(f"removed {stale} (half-written by a run that was killed)")
    if args.c:
        state = load_checkpoint(latest)
        if state["settings"].get("manifest_hash") != prepared.plan["manifest_hash"]:
            raise MimError(f"{latest}: the run started on other data (manifest "
                           f"{str(state['settings'].get('manifest_hash'))[:12]}, now "
                           f"{prepared.plan['manifest_hash'][:12]}); an exact continuation needs the same -d")
        settings = continued_settings(state["settings"], world_size, device, out, prepared.store,
                                      **operational_from(args))
    else:
        if latest.is_file():
            raise MimError(f"{out} already holds a run ({LATEST}); continue it with --c, or start another with "
                           f"-run NAME")
        settings = resolve_settings(prepared.plan, prepared.store, out, world_size, device,
                                    switches=switches_from(args), input_size=args.input_size,
                                    per_device_batch=args.batch, accumulation=args.accum, steps=args.steps,
                                    lr=args.lr, precision=args.precision, seed=args.seed, clip_grad=args.clip_grad,
                                    **operational_from(args))
    write_json_atomic(out / "settings.json", settings.to_dict())
    return settings


def _run(args: argparse.Namespace) -> int:
    from .pretrain.distributed import under_torchrun
    from .pretrain.engine import launch

    if args.gpus < 1:
        raise MimError(f"-gpus must be at least 1, got {args.gpus}")
    if under_torchrun():
        return _run_under_torchrun(args)
    device = pick_device(args.device, args.gpus)
    launch(settings_for(args, args.gpus, device), resume=args.c)
    return 0


def _run_under_torchrun(args: argparse.Namespace) -> int:
    """Rank 0 prepares the data and resolves the settings while the others wait; then all train."""
    from datetime import timedelta

    import torch.distributed as dist

    from .defaults import DIST_PREPARE_TIMEOUT_S
    from .pretrain.distributed import close_group, init_group, visible_gpus
    from .pretrain.engine import launch
    from .pretrain.settings import RunSettings

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    device = args.device or ("cuda" if visible_gpus() else "cpu")
    init_group(rank, world, device)
    try:
        waiting = dist.new_group(backend="gloo", timeout=timedelta(seconds=DIST_PREPARE_TIMEOUT_S))
        message = [None]
        if rank == 0:
            try:
                message = [{"settings": settings_for(args, world, device).to_dict()}]
            except MimError as exc:
                message = [{"error": str(exc)}]
        dist.broadcast_object_list(message, src=0, group=waiting)
        if "error" in message[0]:
            raise MimError(message[0]["error"] if rank == 0 else "rank 0 could not prepare the run (see its error)")
        launch(RunSettings.from_dict(message[0]["settings"]), resume=args.c)
    finally:
        close_group()
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return run_guarded(lambda: _run(args), "mim_pretrain")


if __name__ == "__main__":
    sys.exit(main())
