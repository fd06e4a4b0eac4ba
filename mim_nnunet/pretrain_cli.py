"""``mim_pretrain``: MiM pre-training (planning, preprocessing, training, export).

The engine lands with the pre-training issues; until then the command checks the environment it
will need and says plainly that pre-training is not available in this version.
"""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from .cli import run_guarded
from .environment import require_nnunet_paths


def build_parser() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog="mim_pretrain", description=__doc__)


def _run(args: argparse.Namespace) -> int:
    require_nnunet_paths(("nnUNet_preprocessed", "nnUNet_results"))
    print("mim_pretrain: error: MiM pre-training is not implemented in mim-nnunet "
          f"{__import__('mim_nnunet').__version__} yet; fine-tune from scratch with -tr nnUNetTrainerSwinUNETR",
          file=sys.stderr)
    return 3


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return run_guarded(lambda: _run(args), "mim_pretrain")


if __name__ == "__main__":
    sys.exit(main())
