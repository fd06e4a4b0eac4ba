"""Label efficiency (the MiM paper's Table 5 protocol): fine-tune MiM-initialised and scratch networks on
25 %, 50 % and 100 % of a dataset's training cases, evaluate on its test cases, plot DSC against the fraction.

    python scripts/label_efficiency.py -d 3 -mim_trainer nnUNetTrainerMiM -scratch_trainer nnUNetTrainerMiMScratch
    python scripts/label_efficiency.py -d 991 -mim_trainer nnUNetTrainerMiM_tiny_1epoch \\
        -scratch_trainer nnUNetTrainerMiMScratch_tiny_1epoch -device cpu          # tiny sizes on a CPU

The dataset must be planned and preprocessed (nnUNetv2_plan_and_preprocess) and have imagesTs/labelsTs.
Each fraction is a fold of an extra ``splits_final.json`` written next to the plans (the original is
kept as ``splits_final.json.orig``): fold k trains on a seeded random subset of the training cases and
validates on the rest (at least one case). Training, prediction and evaluation are the stock
commands and ``mim_evaluate``; results: ``label_efficiency.json`` and ``label_efficiency.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

from mim_nnunet.downstream.splits import fraction_splits

FRACTIONS = (0.25, 0.5, 1.0)


def run(cmd: List[str]) -> None:
    print("$ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def build_parser() -> argparse.ArgumentParser:
    from mim_nnunet.cli.flags import add_flag
    parser = argparse.ArgumentParser(prog="label_efficiency.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-d", required=True, help="nnU-Net dataset id")
    add_flag(parser, "-mim_trainer", "--mim", default="nnUNetTrainerMiM", help="MiM-initialised trainer")
    add_flag(parser, "-scratch_trainer", "--scratch", default="nnUNetTrainerMiMScratch", help="its from-scratch twin")
    parser.add_argument("-c", default="3d_fullres")
    add_flag(parser, "-fractions", "--fractions", type=float, nargs="+", default=list(FRACTIONS))
    add_flag(parser, "-device", "--device", default="cuda")
    add_flag(parser, "-seed", "--seed", type=int, default=0)
    add_flag(parser, "-o", "--output", default="label_efficiency", help="output folder")
    add_flag(parser, "--splits_only", "--splits-only", action="store_true", help="write the splits and stop")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)

    from nnunetv2.utilities.dataset_name_id_conversion import (
        maybe_convert_to_dataset_name,
    )

    name = maybe_convert_to_dataset_name(args.d)
    pre = Path(os.environ["nnUNet_preprocessed"]) / name
    raw = Path(os.environ["nnUNet_raw"]) / name
    cases = sorted(p.name[:-len(".nii.gz")] for p in (raw / "labelsTr").glob("*.nii.gz"))
    splits_file = pre / "splits_final.json"
    if splits_file.is_file() and not (pre / "splits_final.json.orig").is_file():
        shutil.copy(splits_file, pre / "splits_final.json.orig")
    splits = fraction_splits(cases, args.fractions, args.seed)
    splits_file.write_text(json.dumps(splits, indent=1), encoding="utf-8")
    print(f"{splits_file}: folds " + ", ".join(f"{i} = {f:g} ({len(s['train'])} cases)"
                                                for i, (f, s) in enumerate(zip(args.fractions, splits))))
    if args.splits_only:
        return 0

    out = Path(args.o)
    out.mkdir(parents=True, exist_ok=True)
    results: Dict[str, Dict[str, float]] = {}
    for trainer in (args.mim_trainer, args.scratch_trainer):
        results[trainer] = {}
        for fold, fraction in enumerate(args.fractions):
            run(["nnUNetv2_train", str(args.d), args.c, str(fold), "-tr", trainer, "-device", args.device])
            pred = out / f"{trainer}_fold{fold}"
            run(["nnUNetv2_predict", "-i", str(raw / "imagesTs"), "-o", str(pred), "-d", str(args.d), "-c", args.c,
                 "-f", str(fold), "-tr", trainer, "-device", args.device, "--disable_tta"])
            run(["mim_evaluate", "-pred", str(pred), "-ref", str(raw / "labelsTs"), "-o", str(pred / "scores.json")])
            results[trainer][str(fraction)] = json.loads((pred / "scores.json").read_text(encoding="utf-8"))["overall"]["dsc"]
    (out / "label_efficiency.json").write_text(json.dumps(results, indent=1), encoding="utf-8")

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5, 4))
    for trainer, scores in results.items():
        # None: the classes were absent from every reference and prediction (no score); a gap in the line
        ax.plot([100 * float(f) for f in scores], [float("nan") if v is None else 100 * v for v in scores.values()],
                marker="o", label=trainer)
    ax.set_xlabel("training cases (%)")
    ax.set_ylabel("mean DSC on the test cases (%)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "label_efficiency.png", dpi=100)
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
