"""``mim_evaluate``: DSC and NSD per class and their mean, from a prediction and a label folder."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional

from ..evaluation import DEFAULT_NSD_TOLERANCE_MM
from . import run_guarded
from .flags import add_flag


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mim_evaluate", description=__doc__ + (
        " A class absent from one of label and prediction scores 0; absent from both, the case is left out of "
        "that class's mean (as in nnU-Net), and the table says how many cases each mean covers."))
    parser.add_argument("-pred", required=True, help="folder of predicted label maps (same file names as -ref)")
    parser.add_argument("-ref", required=True, help="folder of reference label maps")
    parser.add_argument("-labels", type=int, nargs="+", default=None,
                        help="classes to score in every case (default: those dataset.json lists, else every "
                             "non-zero value of any reference or prediction)")
    parser.add_argument("-tolerance", type=float, default=DEFAULT_NSD_TOLERANCE_MM,
                        help="NSD tolerance in mm (default: %(default)s)")
    parser.add_argument("-dataset_json", default=None,
                        help="dataset.json: the classes and their names (default: dataset.json next to -ref)")
    add_flag(parser, "-o", "--output", default=None, help="JSON file to write (default: <pred>/summary_mim.json)")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)

    def _run() -> int:
        from ..common.atomic import write_json_atomic
        from ..evaluation import absent_notes, class_names, evaluate_folders, markdown_table
        dataset_json = Path(args.dataset_json) if args.dataset_json else Path(args.ref).parent / "dataset.json"
        result = evaluate_folders(Path(args.pred), Path(args.ref), args.labels, args.tolerance,
                                  dataset_json=dataset_json)
        for warning in result["warnings"]:
            print(f"mim_evaluate: warning: {warning}", file=sys.stderr)
        print(f"classes {result['classes']} (from {result['classes_from']})")
        names = class_names(dataset_json)
        print(markdown_table(result, names))
        for note in absent_notes(result, names):
            print(note)
        out = Path(args.o) if args.o else Path(args.pred) / "summary_mim.json"
        write_json_atomic(out, result)
        print(f"written: {out}")
        return 0
    return run_guarded(_run, "mim_evaluate")


if __name__ == "__main__":
    sys.exit(main())
