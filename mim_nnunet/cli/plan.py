"""``mim_plan_and_preprocess``: fingerprint pre-training data, write its pre-training plan and preprocess it (no
training)."""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from ..backbones import BACKBONES, size_table
from ..data.intensity import CT_WINDOW
from ..data.modality import AUTO
from ..data.planner import DEFAULT_GPU_MEMORY_TARGET_GB
from ..data.sources import DATA_ROOT_ENV
from . import run_guarded
from .flags import add_flag

SIZES = tuple(sorted({size for backbone in BACKBONES for size in size_table(backbone)}))


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """The data and planning flags, shared with ``mim_pretrain``."""
    parser.add_argument("-d", nargs="+", required=True, metavar="DATA",
                        help=f"collections (1k, 10k: sources under ${DATA_ROOT_ENV}), nnU-Net dataset ids or names, "
                             "folders of images or DICOM series, MONAI datalist .json files; several may be combined")
    add_flag(parser, "-data_name", "-o", "--name", default=None, metavar="NAME",
             help="name of the pre-training data: its folder is MiM_<name> (default: from -d)")
    parser.add_argument("-backbone", choices=BACKBONES, default="hybrid")
    parser.add_argument("-size", choices=SIZES, default=None,
                        help="hybrid, swin: base (default), tiny; resenc: M, L (default; nnU-Net's ResEnc-M/-L "
                             "encoders), tiny")
    parser.add_argument("-gpu_memory_target", type=float, default=None,
                        help=f"memory per device to plan the batch for, in GB (default: {DEFAULT_GPU_MEMORY_TARGET_GB:g} "
                             f"for GPUs; mim_pretrain on the CPU: from the RAM available, said in the pre-training plan)")
    parser.add_argument("-np", type=int, default=2,
                        help="processes for fingerprint and preprocessing (1: in this process; default: %(default)s)")
    parser.add_argument("-modality", nargs="+", default=[AUTO], metavar="{CT,MRI,auto}",
                        help="modality of folders and datalists, one for all or one per -d entry; 'auto' (default) "
                             "detects it per case from the header or the intensities (CT holds HU of fat and air); "
                             "a datalist may say its own ('modality' at its top or per item); collections and nnU-Net "
                             "datasets say their own. A case that looks unlike its declaration is warned about")
    add_flag(parser, "--allow_partial", "--allow-partial", action="store_true",
             help="proceed when a collection source is missing or short, with what exists")
    add_flag(parser, "-check_leakage", "--check_leakage", metavar="DATASET",
             help="warn when images of this nnU-Net dataset are in the pre-training data")
    parser.add_argument("--fail_on_leakage", action="store_true", help="with -check_leakage: stop instead of warn")
    parser.add_argument("-spacing", type=float, nargs=3, metavar=("X", "Y", "Z"), default=None,
                        help="target spacing in mm (image axes x y z) instead of the planned one")
    parser.add_argument("-ct_window", type=float, nargs=2, metavar=("LO", "HI"), default=None,
                        help=f"CT window in HU, clipped and scaled to [0, 1] (default: {list(CT_WINDOW)}, the paper's "
                             "Table 1 preprocessing); fine-tuning should see the same: "
                             "`mim_nnunet plans-variant -ct_window LO HI`")
    parser.add_argument("--replan", action="store_true",
                        help="write the pre-training plan again even if one for the same data and settings exists "
                             "(edits are lost)")


DEFAULT_SIZE = {"hybrid": "base", "swin": "base", "resenc": "L"}


def check_size(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
    """``-size`` defaulted per backbone and checked against its size table (an argparse error otherwise)."""
    args.size = args.size or DEFAULT_SIZE[args.backbone]
    if args.size not in size_table(args.backbone):
        parser.error(f"-size {args.size}: the {args.backbone} backbone has sizes {', '.join(size_table(args.backbone))}")
    return args


def prepare_from(args: argparse.Namespace, device: str = "cuda", processes: int = 1):
    """Run the data preparation the flags describe (:func:`mim_nnunet.data.pipeline.prepare`) for a run on
    ``processes`` local ``device`` processes (the memory target: :func:`mim_nnunet.data.planner.memory_target_for`)."""
    from ..data.pipeline import prepare
    from ..data.planner import memory_target_for
    return prepare(args.d, name=args.data_name, backbone=args.backbone, size=args.size,
                   gpu_memory_target_gb=memory_target_for(device, processes, args.gpu_memory_target),
                   num_processes=args.np,
                   allow_partial=args.allow_partial, modality=args.modality, leakage_dataset=args.check_leakage,
                   leakage_fail=args.fail_on_leakage, replan=args.replan, spacing_xyz=args.spacing,
                   ct_window=args.ct_window)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mim_plan_and_preprocess", description=__doc__)
    add_data_arguments(parser)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = check_size(parser, parser.parse_args(argv))

    def _run() -> int:
        from ..common.layout import plan_file
        prepared = prepare_from(args)
        print(f"pre-training plan: {plan_file(prepared.folder, args.backbone, args.size)}\nstore: {prepared.store}")
        return 0
    return run_guarded(_run, "mim_plan_and_preprocess")


if __name__ == "__main__":
    sys.exit(main())
