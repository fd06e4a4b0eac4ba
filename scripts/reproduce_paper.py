"""Reproduce the MiM paper's segmentation tables (Tables 4-6) for one nnU-Net dataset: fine-tune a MiM-initialised
network and its from-scratch twin (same network, same budget) with the paper's recipe (plans/downstream) or
nnU-Net's own plans, on the chosen label fractions, score DSC and NSD per class on the validation fold, and
write a table in the paper's layout (with the paper's published row next to ours where the recipe has one)
and a JSON file.

    python scripts/reproduce_paper.py -d 501                        # BTCV: recipe, 24/6 split, hybrid base, GPU
    python scripts/reproduce_paper.py -d 501 -backbone swin -fractions 0.25 0.5 1.0
    python scripts/reproduce_paper.py -d 3 -recipe msd_task03_liver -plans nnunet
    python scripts/reproduce_paper.py -d 501 -size tiny -device cpu     # tiny networks, 1 epoch: a CPU smoke run

Every step is the command a user would type, in a subprocess: nnUNetv2_extract_fingerprint and
nnUNetv2_plan_experiment (when the dataset has no plans yet), mim_nnunet recipe-plans, nnUNetv2_preprocess,
mim_nnunet splits, nnUNetv2_train (its final validation predicts the validation cases). Finished steps are
skipped on a rerun. The MiM trainer finds its export as usual (plans, $MIM_PRETRAINED_WEIGHTS, or the newest
mim_pretrain export); -weights sets $MIM_PRETRAINED_WEIGHTS. A rerun reuses preprocessed data and finished
trainings only when the plans, split and weights they were made with are unchanged. Results:
<output>/reproduce_<dataset>.md and .json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

FRACTIONS = (1.0,)
# (MiM-initialised trainer, from-scratch twin) per backbone and size; 'tiny' = the 1-epoch CPU variants.
TRAINERS = {
    ("hybrid", "base"): ("nnUNetTrainerMiM", "nnUNetTrainerMiMScratch"),
    ("swin", "base"): ("nnUNetTrainerMiMSwinUNETR", "nnUNetTrainerSwinUNETR"),
    ("hybrid", "tiny"): ("nnUNetTrainerMiM_tiny_1epoch", "nnUNetTrainerMiMScratch_tiny_1epoch"),
    ("swin", "tiny"): ("nnUNetTrainerMiMSwinUNETR_tiny_1epoch", "nnUNetTrainerSwinUNETR_fs12_1epoch"),
}
KINDS = ("Scratch", "MiM")
# What a rerun compares before reusing preprocessed data / a finished training (written next to them).
PREPROCESSED_MARKER = "mim_reproduce.sha256"
TRAINED_MARKER = "mim_reproduce.json"


def run(cmd: List[str], env: Optional[Dict[str, str]] = None) -> float:
    """Run a command (output streams through); a failure stops the script with the command and its status."""
    print("$ " + " ".join(cmd), flush=True)
    start = time.time()
    result = subprocess.run(cmd, env=env)
    if result.returncode != 0:
        raise SystemExit(f"reproduce_paper: '{' '.join(cmd)}' exited with status {result.returncode}")
    return time.time() - start


def _percent(value: Optional[float]) -> str:
    """A published value (already in %), "–" where the paper gives none."""
    return "–" if value is None else f"{value:.2f}"


def percent(value: Optional[float]) -> str:
    """One of our scores (a fraction of 1) in %; "absent" where the class was absent from every reference and
    prediction (see ``mim_nnunet.evaluation``)."""
    from mim_nnunet.evaluation import percent as score_percent
    return score_percent(value)


def build_table(title: str, results: Dict[str, Dict], classes: Dict[int, str], published: Sequence[Dict],
                fraction: float) -> str:
    """One table in the layout of the paper's Tables 4-6: a row per method, DSC (%) per class, then the average
    DSC and NSD (%). ``results[kind]`` holds ``dsc``/``nsd`` per class name and their means (fractions of 1);
    ``published`` rows (recipe ``published``, values in %) for this ``fraction`` follow ours."""
    names = [classes[c] for c in sorted(classes)]
    lines = [f"### {title}", "", "| Method | " + " | ".join(names) + " | Avg DSC (%) | Avg NSD (%) |",
             "|---" * (len(names) + 3) + "|"]
    for kind, result in results.items():
        cells = [percent(result["dsc"][n]) if n in result["dsc"] else "–" for n in names]
        lines.append(f"| {kind} ({result['trainer']}) | " + " | ".join(cells) +
                     f" | {percent(result['mean_dsc'])} | {percent(result['mean_nsd'])} |")
    for row in published:
        if float(row.get("fraction", 1.0)) != float(fraction):
            continue
        dsc, nsd = row.get("dsc", {}), row.get("nsd", {})
        cells = [_percent(dsc.get("per_class", {}).get(n)) for n in names]
        lines.append(f"| {row['method']}, paper (Table {row.get('table', '?')}) | " + " | ".join(cells) +
                     f" | {_percent(dsc.get('mean'))} | {_percent(nsd.get('mean'))} |")
    return "\n".join(lines)


def efficiency_table(results: Dict[str, Dict[str, Dict]], fractions: Sequence[float]) -> str:
    """Mean DSC (%) per method and label fraction (the paper's Table 5 layout)."""
    head = "| Method | " + " | ".join(f"{100 * f:g} % labels" for f in fractions) + " |"
    lines = [head, "|---" * (len(fractions) + 1) + "|"]
    for kind, per_fraction in results.items():
        cells = [percent(per_fraction[str(float(f))]["mean_dsc"]) for f in fractions]
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def scores_for(prediction_dir: Path, raw: Path, val_cases: Sequence[str], classes: Dict[int, str],
               work: Path, tolerance_mm: float) -> Dict:
    """DSC and NSD per class of nnU-Net's validation predictions against the raw labels of ``val_cases``."""
    from mim_nnunet.evaluation import evaluate_folders
    reference = work / "labels"
    if reference.exists():
        shutil.rmtree(reference)
    reference.mkdir(parents=True)
    for case in val_cases:
        shutil.copyfile(raw / "labelsTr" / f"{case}.nii.gz", reference / f"{case}.nii.gz")
    result = evaluate_folders(prediction_dir, reference, classes=sorted(classes), tolerance_mm=tolerance_mm)
    return {"dsc": {classes[c]: v["dsc"] for c, v in result["mean"].items()},
            "nsd": {classes[c]: v["nsd"] for c, v in result["mean"].items()},
            "mean_dsc": result["overall"]["dsc"], "mean_nsd": result["overall"]["nsd"], "cases": result["cases"]}


def predict_missing(validation: Path, raw: Path, cases: Sequence[str], nnunet_args: List[str],
                    env: Optional[Dict[str, str]]) -> float:
    """Predict the validation ``cases`` nnU-Net's final validation left out (short trainer variants validate a
    bounded number of cases) into ``validation``, as nnU-Net's validation would have; returns the seconds."""
    work = validation.parent / "validation_rest"
    shutil.rmtree(work, ignore_errors=True)
    (work / "in").mkdir(parents=True)
    for case in cases:
        for image in sorted((raw / "imagesTr").glob(f"{case}_[0-9][0-9][0-9][0-9].nii.gz")):
            os.symlink(image.resolve(), work / "in" / image.name)
    seconds = run(["nnUNetv2_predict", "-i", str(work / "in"), "-o", str(work / "out"), *nnunet_args], env)
    validation.mkdir(parents=True, exist_ok=True)
    for case in cases:
        os.replace(work / "out" / f"{case}.nii.gz", validation / f"{case}.nii.gz")
    shutil.rmtree(work)
    return seconds


def plans_digest(plans: Dict, configuration: str, data_only: bool) -> str:
    """sha256 of what a configuration's preprocessed data (``data_only``) or trained model depends on: a rerun
    reuses preprocessing and training only when this is unchanged."""
    import hashlib

    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    config = dict(PlansManager(plans).get_configuration(configuration).configuration)
    if data_only:
        for key in ("patch_size", "batch_size", "architecture", "batch_dice"):
            config.pop(key, None)
    payload = {"configuration": config, "transpose": plans["transpose_forward"],
               "intensity": plans["foreground_intensity_properties_per_channel"]}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def build_parser() -> argparse.ArgumentParser:
    from mim_nnunet.cli.flags import add_flag
    parser = argparse.ArgumentParser(prog="reproduce_paper.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-d", required=True, help="nnU-Net dataset id or name (converted; planning is done if missing)")
    add_flag(parser, "-recipe", "--recipe", default=None,
             help="recipe (plans/downstream/*.json name or file); default: the one of the converter that "
                  "wrote the dataset (btcv, mmwhs_ct, flare22, covid19_20)")
    add_flag(parser, "-plans", "--plans", choices=("recipe", "nnunet"), default=None,
             help="the recipe's plans variant, or nnU-Net's own plans (default: recipe when "
                  "there is one)")
    add_flag(parser, "-backbone", "--backbone", choices=("hybrid", "swin"), default="hybrid")
    add_flag(parser, "-size", "--size", choices=("base", "tiny"), default="base",
             help="base: the paper's networks, 1000 epochs; tiny: 1-epoch CPU smoke variants")
    add_flag(parser, "-mim_trainer", "--mim-trainer", default=None, help="override the MiM-initialised trainer")
    add_flag(parser, "-scratch_trainer", "--scratch-trainer", default=None, help="override the from-scratch trainer")
    add_flag(parser, "-weights", "--weights", default=None,
             help="MiM export for the MiM trainer ($MIM_PRETRAINED_WEIGHTS)")
    add_flag(parser, "-fractions", "--fractions", type=float, nargs="+", default=list(FRACTIONS),
             help="label fractions of fold 0's training cases (Table 5: 0.25 0.5 1.0)")
    add_flag(parser, "-seed", "--seed", default="0",
             help="seed of the label subsets ('none': the first cases in order)")
    add_flag(parser, "-split", "--split", choices=("literature", "nnunet"), default=None,
             help="base split (default: the literature's when the dataset has one)")
    parser.add_argument("-c", default="3d_fullres", help="nnU-Net configuration (default: %(default)s)")
    add_flag(parser, "-device", "--device", default="cuda", help="cuda, cpu or mps")
    parser.add_argument("-np", type=int, default=4,
                        help="processes for nnU-Net's fingerprint, preprocessing and prediction (-npp, -nps; "
                             "1: prediction in its own process)")
    add_flag(parser, "-tolerance", "--tolerance", type=float, default=None,
             help="NSD tolerance in mm (default: mim_evaluate's)")
    add_flag(parser, "-o", "--output", default="reproduce_paper", help="output folder")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)

    from mim_nnunet.common.environment import require_ext_trainer, require_nnunet_paths
    from mim_nnunet.downstream.recipes import load_recipe, variant_name
    from mim_nnunet.downstream.splits import (
        LITERATURE,
        RECORD_FILE,
        dataset_folders,
        raw_cases,
    )
    from mim_nnunet.evaluation import DEFAULT_NSD_TOLERANCE_MM

    paths = require_nnunet_paths()
    require_ext_trainer()
    name, raw, pre = dataset_folders(args.d)
    cases, meta = raw_cases(raw)
    converter = (meta.get("mim_nnunet") or {}).get("converter")
    recipe = load_recipe(args.recipe) if args.recipe else (load_recipe(converter) if converter else None)
    plans_kind = args.plans or ("recipe" if recipe else "nnunet")
    if plans_kind == "recipe" and recipe is None:
        raise SystemExit("reproduce_paper: -plans recipe needs -recipe (this dataset was not converted by mim_nnunet)")
    split = args.split or ("literature" if converter in LITERATURE else "nnunet")
    mim_trainer, scratch_trainer = TRAINERS[(args.backbone, args.size)]
    trainers = {"Scratch": args.scratch_trainer or scratch_trainer, "MiM": args.mim_trainer or mim_trainer}
    tolerance = DEFAULT_NSD_TOLERANCE_MM if args.tolerance is None else args.tolerance
    out = Path(args.o)
    out.mkdir(parents=True, exist_ok=True)
    mim = "mim_nnunet"
    timings: Dict[str, float] = {}

    # 1. plans: nnU-Net's own, then the recipe's variant
    if not (pre / "nnUNetPlans.json").is_file():
        timings["fingerprint"] = run(["nnUNetv2_extract_fingerprint", "-d", str(args.d), "-np", str(args.np)])
        timings["plan"] = run(["nnUNetv2_plan_experiment", "-d", str(args.d)])
    plans_name = "nnUNetPlans"
    if plans_kind == "recipe":
        plans_name = variant_name(recipe)
        timings["recipe-plans"] = run([mim, "recipe-plans", "-d", str(args.d), args.recipe or recipe["name"],
                                       "-plans_name", plans_name, "-c", args.c])
    plans = json.loads((pre / f"{plans_name}.json").read_text(encoding="utf-8"))
    identifier = plans["configurations"][args.c].get("data_identifier", f"{plans_name}_{args.c}")
    preprocessed = pre / identifier
    # beside the folder: nnU-Net infers its data format from the endings of the files inside it
    marker, data_digest = pre / f"{identifier}.{PREPROCESSED_MARKER}", plans_digest(plans, args.c, data_only=True)
    done = marker.is_file() and marker.read_text(encoding="utf-8") == data_digest
    if not done or len(list(preprocessed.glob("*.pkl"))) != len(cases):
        timings["preprocess"] = run(["nnUNetv2_preprocess", "-d", str(args.d), "-plans_name", plans_name, "-c", args.c,
                                     "-np", str(args.np)])
        marker.write_text(data_digest, encoding="utf-8")
    model_digest = plans_digest(plans, args.c, data_only=False)

    # 2. splits: base folds + one fold per label fraction
    run([mim, "splits", "-d", str(args.d), "-split", split, "-seed", args.seed,
         "-fractions", *[str(f) for f in args.fractions]])
    record = json.loads((pre / RECORD_FILE).read_text(encoding="utf-8"))
    splits = json.loads((pre / "splits_final.json").read_text(encoding="utf-8"))
    classes = {int(v): k for k, v in meta["labels"].items() if int(v) != 0}

    # 3. fine-tune each network on each fraction; nnU-Net's final validation predicts the validation cases (the
    # ones a short variant's bounded validation leaves out are predicted here)
    env = dict(os.environ)
    if args.weights:
        env["MIM_PRETRAINED_WEIGHTS"] = str(Path(args.weights).resolve())
    results: Dict[str, Dict[str, Dict]] = {kind: {} for kind in KINDS}
    results_root = Path(paths["nnUNet_results"]) / name
    predict_np = str(args.np) if args.np > 1 else "0"      # nnU-Net's 0: sequential, in the predicting process
    for fraction in args.fractions:
        fold = record["fraction_folds"][str(float(fraction))]
        for kind in KINDS:
            trainer = trainers[kind]
            fold_dir = results_root / f"{trainer}__{plans_name}__{args.c}" / f"fold_{fold}"
            validation = fold_dir / "validation"
            val_cases = splits[fold]["val"]
            # reuse a finished run only if it trained on these data, this split and these plans
            trained_with = {"plans": model_digest, "train": splits[fold]["train"], "val": val_cases,
                            "weights": env.get("MIM_PRETRAINED_WEIGHTS") if kind == "MiM" else None}
            marker = fold_dir / TRAINED_MARKER
            reusable = (marker.is_file() and json.loads(marker.read_text(encoding="utf-8")) == trained_with
                        and (fold_dir / "checkpoint_final.pth").is_file())
            if not reusable:
                cmd = ["nnUNetv2_train", str(args.d), args.c, str(fold), "-tr", trainer, "-p", plans_name,
                       "-device", args.device]
                timings[f"{kind} fold {fold}"] = run(cmd, env if kind == "MiM" else None)
                marker.write_text(json.dumps(trained_with), encoding="utf-8")
            missing = [c for c in val_cases if not (validation / f"{c}.nii.gz").is_file()]
            if missing:
                timings[f"{kind} fold {fold} prediction"] = predict_missing(
                    validation, raw, missing, ["-d", str(args.d), "-c", args.c, "-f", str(fold), "-tr", trainer,
                                               "-p", plans_name, "-device", args.device, "-npp", predict_np,
                                               "-nps", predict_np], env if kind == "MiM" else None)
            scores = scores_for(validation, raw, val_cases, classes, out / f"{kind}_fold{fold}", tolerance)
            results[kind][str(float(fraction))] = {"trainer": trainer, "fold": fold,
                                                   "train_cases": len(splits[fold]["train"]),
                                                   "val_cases": list(val_cases), **scores}

    # 4. tables and JSON
    title = recipe["title"] if recipe else name
    published = recipe["published"] if recipe else []
    sections = [f"# {title}: MiM-initialised vs from scratch ({name})", "",
                f"Plans: `{plans_name}` ({'the paper recipe ' + recipe['name'] if plans_kind == 'recipe' else 'nnU-Net'}"
                f"), configuration {args.c}; split: {record['description']}; backbone {args.backbone} ({args.size}); "
                f"DSC and NSD (tolerance {tolerance:g} mm) on the validation cases of each fold."]
    for fraction in args.fractions:
        key = str(float(fraction))
        some = results["MiM"][key]
        heading = (f"{100 * fraction:g} % of the training labels (fold {some['fold']}: {some['train_cases']} training, "
                   f"{len(some['val_cases'])} validation cases)")
        sections += ["", build_table(heading, {k: results[k][key] for k in KINDS}, classes, published, fraction)]
    sections += ["", "### Label efficiency (mean DSC %)", "", efficiency_table(results, args.fractions)]
    if recipe and not published:
        sections += ["", "The paper's published rows are not in the recipe (" + "; ".join(recipe["unknown"]) + ")."]
    markdown = "\n".join(sections) + "\n"
    stem = out / f"reproduce_{name}"
    from mim_nnunet.common.atomic import atomic_write, write_json_atomic
    atomic_write(stem.with_suffix(".md"), lambda tmp: tmp.write_text(markdown, encoding="utf-8"))
    write_json_atomic(stem.with_suffix(".json"), {
        "dataset": name, "recipe": recipe["name"] if recipe else None, "plans": plans_name, "configuration": args.c,
        "backbone": args.backbone, "size": args.size, "trainers": trainers, "split": record,
        "nsd_tolerance_mm": tolerance, "classes": {str(c): n for c, n in classes.items()}, "results": results,
        "published": published, "timings_s": timings})
    print(markdown)
    print(f"written: {stem.with_suffix('.md')} and {stem.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
