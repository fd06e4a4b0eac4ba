"""``mim_nnunet convert``, ``splits`` and ``recipe-plans``: the paper's downstream datasets through stock nnU-Net."""

from __future__ import annotations

import argparse

from ..cli.flags import add_flag


def _cmd_convert(args: argparse.Namespace) -> int:
    from .converters import convert
    convert(args.name, args.src, args.d, allow_partial=args.allow_partial, split=args.split, overwrite=args.overwrite)
    return 0


def _seed(text: str):
    return None if text.lower() == "none" else int(text)


def _cmd_splits(args: argparse.Namespace) -> int:
    from .splits import write_splits
    write_splits(args.d, args.split, args.fractions, args.seed)
    return 0


def _cmd_recipe_plans(args: argparse.Namespace) -> int:
    from ..finetune.plans_variants import next_commands
    from .recipes import apply_recipe, load_recipe, variant_name
    recipe = load_recipe(args.recipe)
    name = args.plans_name or variant_name(recipe, args.p)
    out = apply_recipe(args.d, recipe, args.p, name, args.c, args.gpu_memory_target)
    if recipe["augmentation"]:
        print(f"augmentation of Table 2 {recipe['augmentation']}: recorded in the plans; nnU-Net's own augmentation "
              f"pipeline trains")
    print(f"wrote {out} (recipe {recipe['name']}: {recipe['source']})\nnext:\n{next_commands(args.d, name, args.c)}")
    return 0


def add_commands(sub) -> None:
    """Register the subcommands of this package on ``mim_nnunet``'s subparsers."""
    from ..finetune.commands import add_dataset_and_plans
    from .splits import (
        SCHEMES,  # light: the converters import SimpleITK, only the command needs them
    )

    p = sub.add_parser("convert", help="convert a downstream dataset of the MiM paper, as distributed, into an nnU-Net "
                                       "raw dataset (checks names, count, label values, geometry)")
    p.add_argument("name", help="btcv, mmwhs_ct, flare22 or covid19_20")
    p.add_argument("src", help="the unpacked download (e.g. BTCV's RawData folder)")
    p.add_argument("-d", type=int, default=None, help="nnU-Net dataset id (default: 501 btcv, 502 mmwhs_ct, "
                                                      "503 flare22, 504 covid19_20)")
    add_flag(p, "--allow_partial", "--allow-partial", action="store_true",
             help="convert fewer cases than the published set")
    add_flag(p, "-split", "--split", choices=SCHEMES, default="literature",
             help="literature: write the published split (BTCV 24/6, MM-WHS folds) as splits_final.json; "
                  "nnunet: none, nnU-Net makes its 5 folds (default: %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier conversion")
    p.set_defaults(func=_cmd_convert)

    p = sub.add_parser("splits", help="write splits_final.json: the literature's split or nnU-Net's 5 folds, plus one "
                                      "fold per label fraction (Table 5)")
    p.add_argument("-d", required=True, help="nnU-Net dataset id or name")
    add_flag(p, "-split", "--scheme", choices=SCHEMES, default="literature",
             help="base folds: literature (the published split) or nnunet (nnU-Net's 5 folds) (default: %(default)s)")
    add_flag(p, "-fractions", "--fractions", type=float, nargs="*", default=[],
             help="label fractions, e.g. 0.25 0.5: extra folds training on that share of fold 0's training "
                  "cases, validating on fold 0's validation cases")
    add_flag(p, "-seed", "--seed", type=_seed, default=0,
             help="seed of the nested subsets; 'none' takes the first cases in order, as the MiM release's "
                  "subset files do (default: %(default)s)")
    p.set_defaults(func=_cmd_splits)

    p = sub.add_parser("recipe-plans", help="write the plans variant of one of the paper's fine-tuning recipes "
                                            "(plans/downstream/RECIPE.json: spacing, crop size, HU window)")
    add_dataset_and_plans(p)
    p.add_argument("recipe", help="recipe name (plans/downstream/*.json, e.g. btcv) or a recipe file")
    add_flag(p, "-plans_name", "-o", default=None, help="name of the plans variant (default: <source plans>_<recipe>)")
    p.set_defaults(func=_cmd_recipe_plans)
