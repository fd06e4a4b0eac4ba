"""``mim_nnunet``: utility commands (where the trainers are, environment checks, the demo, exports)."""

from __future__ import annotations

import argparse
import sys
from typing import Callable, List, Optional

from .errors import MimError
from .environment import require_ext_trainer, require_nnunet_paths, shell_exports, trainers_dir


def _cmd_trainers_path(args: argparse.Namespace) -> int:
    print(trainers_dir())
    return 0


def _cmd_env(args: argparse.Namespace) -> int:
    print(shell_exports())
    return 0


def _cmd_check_env(args: argparse.Namespace) -> int:
    paths = require_nnunet_paths()
    folder = require_ext_trainer()
    for name, value in paths.items():
        print(f"{name}={value}")
    print(f"nnUNet_extTrainer lists {folder}")
    print("environment OK")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo  # imports torch; keep the other commands instant
    return run_demo(workspace=args.workspace, device=args.device, trainer=args.trainer)


def _cmd_import_official(args: argparse.Namespace) -> int:
    from .export import import_official  # imports torch
    out = args.output or str(args.file.rsplit(".", 1)[0] + "_mim_export.safetensors")
    report = import_official(args.file, out, size=args.size)
    for key in report["dropped"]:
        print(f"dropped {key}")
    print(f"kept {len(report['kept'])} encoder tensors (all of them), dropped {len(report['dropped'])} "
          f"(decoder and alignment heads)\nexport: {report['weights']}\nrecord: {report['record']}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from .pretrain.exporting import export_checkpoint  # imports torch
    weights, meta = export_checkpoint(args.checkpoint, args.output)
    print(f"export: {weights}\nrecord: {meta}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mim_nnunet", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("trainers-path", help="print the folder to put in nnUNet_extTrainer")
    p.set_defaults(func=_cmd_trainers_path)
    p = sub.add_parser("env", help='print the export line for nnUNet_extTrainer; use: eval "$(mim_nnunet env)"')
    p.set_defaults(func=_cmd_env)
    p = sub.add_parser("check-env", help="check nnUNet_raw/_preprocessed/_results and nnUNet_extTrainer")
    p.set_defaults(func=_cmd_check_env)
    p = sub.add_parser("demo", help="full pipeline on a small generated dataset (stock nnU-Net commands)")
    p.add_argument("--workspace", default="demo_workspace",
                   help="folder for the demo's nnUNet_raw/_preprocessed/_results (default: ./demo_workspace)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="device for training and prediction (default: cuda if available, else cpu)")
    p.add_argument("--trainer", default="nnUNetTrainerSwinUNETR_fs12_10epochs",
                   help="trainer to run (default: %(default)s; nnUNetTrainerSwinUNETR_fs12_1epoch is fastest)")
    p.set_defaults(func=_cmd_demo)
    p = sub.add_parser("import-official", help="convert a checkpoint published by the MiM authors into our export")
    p.add_argument("file", help="the authors' checkpoint (.pth, checkpoint['model'] with the release's names)")
    p.add_argument("-o", "--output", help="export path (.safetensors; default: next to FILE)")
    p.add_argument("--size", choices=("base", "tiny"), default="base", help="hybrid size (the release is base)")
    p.set_defaults(func=_cmd_import_official)
    p = sub.add_parser("export", help="write the encoder of a pre-training checkpoint (finished or not) as an export")
    p.add_argument("checkpoint", help="checkpoint_latest.pt of a mim_pretrain run")
    p.add_argument("-o", "--output", help="export path (.safetensors; default: <run>/export/..._step<k>.safetensors)")
    p.set_defaults(func=_cmd_export)
    return parser


def run_guarded(func: Callable[[], int], prog: str) -> int:
    """Run ``func``; our one-line errors become ``prog: error: ...`` and exit status 2."""
    try:
        return func()
    except MimError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return run_guarded(lambda: args.func(args), "mim_nnunet")


if __name__ == "__main__":
    sys.exit(main())
