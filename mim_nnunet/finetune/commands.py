"""``mim_nnunet plans-variant``: a plans variant (spacing, patch size, CT window) for stock nnU-Net commands."""

from __future__ import annotations

import argparse

from ..cli.flags import add_flag


def _cmd_plans_variant(args: argparse.Namespace) -> int:
    from ..common.errors import PlansError
    from .plans_variants import next_commands, write_plans_variant
    if args.ct_window is None and args.spacing is None and args.patch is None:
        raise PlansError("nothing to change: give -ct_window, -spacing and/or -patch")
    out = write_plans_variant(args.d, args.plans_name, source_plans=args.p, spacing=args.spacing, patch_size=args.patch,
                              ct_window=args.ct_window, configurations=args.c,
                              gpu_memory_target_gb=args.gpu_memory_target)
    print(f"wrote {out}\nnext:\n{next_commands(args.d, args.plans_name, args.c)}")
    return 0


def add_dataset_and_plans(p: argparse.ArgumentParser) -> None:
    p.add_argument("-d", required=True, help="nnU-Net dataset id or name (planned: nnUNetv2_plan_and_preprocess)")
    p.add_argument("-p", default="nnUNetPlans", help="source plans, read and never written (default: %(default)s)")
    p.add_argument("-c", nargs="+", default=["3d_fullres"],
                   help="configurations that get the spacing and patch size (default: %(default)s)")
    p.add_argument("-gpu_memory_target", type=float, default=None,
                   help="GPU memory (GB) nnU-Net's planner sizes the batch for (default: the planner's own)")


def add_commands(sub) -> None:
    """Register the subcommands of this package on ``mim_nnunet``'s subparsers."""
    p = sub.add_parser("plans-variant", help="copy a dataset's nnU-Net plans under a new name (a plans variant) "
                                             "with another spacing, patch size and/or CT intensity window")
    add_dataset_and_plans(p)
    add_flag(p, "-plans_name", "-o", required=True,
             help="name of the plans variant (for nnUNetv2_preprocess -plans_name, nnUNetv2_train -p)")
    add_flag(p, "-ct_window", "--window", type=float, nargs=2, metavar=("LO", "HI"),
             help="HU window: CT channels become (clip(x, LO, HI) - LO) / (HI - LO)")
    add_flag(p, "-spacing", "--spacing", type=float, nargs=3, metavar=("X", "Y", "Z"),
             help="target spacing in mm along the image's x, y, z axes")
    add_flag(p, "-patch", "--patch", type=int, nargs=3, metavar=("X", "Y", "Z"), help="patch size in voxels (x, y, z)")
    p.set_defaults(func=_cmd_plans_variant)
