"""``mim_pretrain``: MiM pre-training (planning, preprocessing, training, export).

Planning and preprocessing run here today (the same code as ``mim_plan_and_preprocess``, resumed when
already done); the training engine lands with its own issue, and until then the command stops after
preparing the data and says so.
"""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from .cli import run_guarded
from .plan_cli import add_data_arguments, run_prepare


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mim_pretrain", description=__doc__)
    add_data_arguments(parser)
    return parser


def _run(args: argparse.Namespace) -> int:
    prepared = run_prepare(args)
    print(f"mim_pretrain: error: data prepared in {prepared.folder}, but the pre-training engine is not in "
          f"mim-nnunet {__import__('mim_nnunet').__version__} yet; fine-tune from scratch with "
          f"-tr nnUNetTrainerSwinUNETR", file=sys.stderr)
    return 3


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return run_guarded(lambda: _run(args), "mim_pretrain")


if __name__ == "__main__":
    sys.exit(main())
