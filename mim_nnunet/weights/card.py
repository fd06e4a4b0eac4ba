"""The model card: ``<export>.card.md`` beside every export's ``.safetensors`` and ``.json`` record, for a
person to read (the record is for programs). Every value comes from the record; a value the run did not
record reads "not recorded", never a default or a guess. :func:`write_card` is called by
:func:`mim_nnunet.weights.export.write_export`, so every export (``mim_pretrain``, ``mim_nnunet export``,
``import-official``, ``import-nnssl``) gets its card; ``mim_nnunet card EXPORT`` prints it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, List, Mapping, Optional

from ..common.atomic import atomic_write

NOT_RECORDED = "not recorded"
CARD_SUFFIX = ".card.md"

MIM_BIBTEX = """@article{zhuang2025mim,
  title   = {MiM: Mask in Mask Self-Supervised Pre-Training for 3D Medical Image Analysis},
  author  = {Zhuang, Jiaxin and Wu, Linshan and Wang, Qiong and Vardhanabhuti, Varut and Luo, Lin and Chen, Hao},
  journal = {IEEE Transactions on Medical Imaging},
  volume  = {44},
  number  = {9},
  year    = {2025},
  note    = {arXiv:2404.15580}
}"""

# the fine-tuning trainer of each backbone (full sizes; other sizes have short variants <trainer>_<size>_*)
TRAINERS = {"hybrid": "nnUNetTrainerMiM", "swin": "nnUNetTrainerMiMSwinUNETR", "resenc": "nnUNetTrainerMiMResEnc"}
SCRATCH = {"hybrid": "nnUNetTrainerMiMScratch", "swin": "nnUNetTrainerSwinUNETR",
           "resenc": "nnUNetTrainer (stock) with the same -p plans"}
RESENC_PLANS = {"M": ("nnUNetPlannerResEncM", "nnUNetResEncUNetMPlans"),
                "L": ("nnUNetPlannerResEncL", "nnUNetResEncUNetLPlans")}

NOT_VALIDATED = (
    "- Segmentation quality on any dataset: this card reports the pre-training's own reconstruction loss only; "
    "fine-tune and evaluate on your task (with a from-scratch twin) before relying on the weights.",
    "- Modalities, body regions, spacings and intensity scalings other than those under Data and Preprocessing.",
    "- Clinical use of any kind.",
    "- Data whose arrays are not oriented as under Preprocessing (nnU-Net trains on arrays as stored).",
)


def card_path(weights: os.PathLike) -> Path:
    """``<name>.card.md`` beside ``<name>.safetensors``."""
    weights = Path(weights)
    return weights.with_name(weights.stem + CARD_SUFFIX)


def _v(value: Any, unit: str = "") -> str:
    if value is None or value == [] or value == {}:
        return NOT_RECORDED
    if isinstance(value, float):
        value = f"{value:.6g}"
    elif isinstance(value, (list, tuple)):
        value = " x ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    return f"{value}{unit}"


def _duration(seconds: Optional[float]) -> str:
    if seconds is None:
        return NOT_RECORDED
    h, rest = divmod(int(round(seconds)), 3600)
    m, s = divmod(rest, 60)
    return f"{seconds:.0f} s ({h} h {m:02d} min {s:02d} s; summed optimiser-step time, start-up and validation excluded)"


def _normalisation(norm: Optional[Mapping]) -> List[str]:
    if not norm:
        return [f"- Intensities: {NOT_RECORDED}"]
    lines = []
    for modality, scheme in sorted(norm.items()):
        if scheme.get("scheme") == "ct_window":
            lo, hi = scheme["window"]
            lines.append(f"- {modality}: HU window [{lo:g}, {hi:g}] clipped and scaled to [0, 1] "
                         f"((clip(x, lo, hi) - lo) / (hi - lo))")
        elif scheme.get("scheme") == "zscore":
            lines.append(f"- {modality}: z-score per case (mean 0, standard deviation 1 over the image)")
        else:
            lines.append(f"- {modality}: {json.dumps(scheme)}")
    return lines


def _nnssl(nnssl: Optional[Mapping]) -> List[str]:
    """What an imported nnssl checkpoint's adaptation plan said (its intensities are named, not described)."""
    if not nnssl:
        return []
    return [f"- nnssl adaptation plan: normalisation {_v(nnssl.get('normalization_schemes'))}, spacing style "
            f"{_v(nnssl.get('spacing_style'))}, pre-training dataset {_v(nnssl.get('dataset_name'))}, recommended "
            f"downstream patch {_v(nnssl.get('recommended_downstream_patchsize'))}; citations named in the "
            f"checkpoint: {_v(', '.join(nnssl['citations']) if nnssl.get('citations') else None)}"]


def _data(record: Mapping) -> List[str]:
    data = record.get("data") or {}
    lines = [f"- Collection: {_v(data.get('collection'))}",
             f"- Data named by -d: {_v(', '.join(data['sources']) if data.get('sources') else None)}",
             f"- Manifest hash (sha256 of every case's files): {_v(record.get('manifest_hash'))}"]
    cases = data.get("cases")
    if cases:
        lines += ["- Cases per source and modality:", "", "| source | modality | cases |", "|---|---|---|"]
        for source, per in sorted(cases.items()):
            for modality, n in sorted(per.items()):
                lines.append(f"| {source} | {modality} | {n} |")
        lines += ["", f"  {data.get('num_cases', sum(n for per in cases.values() for n in per.values()))} cases "
                      f"in all (cases the preprocessing could not read are not counted)"]
    else:
        lines.append(f"- Cases per source and modality: {NOT_RECORDED}")
    checks = data.get("leakage_checks")
    if checks is None:
        lines.append(f"- Leakage checks (downstream images found in the pre-training data): {NOT_RECORDED}")
    elif not checks:
        lines.append("- Leakage checks: none was run (`-check_leakage DATASET` of mim_pretrain / mim_plan_and_preprocess runs one)")
    else:
        for c in checks:
            lines.append(f"- Leakage check against nnU-Net dataset {c.get('dataset')}: "
                         f"{c.get('images_found')} image(s) found in the pre-training data ({_v(c.get('date'))})")
    if record.get("source"):
        lines.append(f"- Imported from: {record['source']}")
    return lines


def _training(record: Mapping) -> List[str]:
    t = record.get("training") or {}
    batch = (f"{t['effective_batch_subvolumes']} sub-volumes per optimiser step ({t.get('effective_batch_crops')} "
             f"crop(s) x {t.get('subvolumes_per_crop')} sub-volumes per crop)"
             if t.get("effective_batch_subvolumes") else None)
    rule = t.get("lr_rule")
    rule = ("given with -lr" if rule == "flag" else f"from the plan: {rule}") if rule else f"rule {NOT_RECORDED}"
    lr = (f"{t['lr']:.6g} (peak; {rule}); {t.get('schedule') or 'schedule ' + NOT_RECORDED}"
          if t.get("lr") is not None else None)
    devices = None
    if t.get("world_size") is not None:
        devices = f"{t['world_size']} x {t.get('device')}"
        if t.get("device_names"):
            devices += f" ({', '.join(sorted(set(t['device_names'])))})"
    mim = t.get("mim")
    switches = ", ".join(f"{k}={json.dumps(v)}" for k, v in sorted(mim.items()) if k not in ("input_size",)) \
        if mim else None
    return [f"- Steps: {_v(record.get('steps'))}",
            f"- Effective batch: {_v(batch)}",
            f"- Learning rate: {_v(lr)}",
            f"- Precision: {_v(t.get('precision'))}",
            f"- Devices: {_v(devices)}",
            f"- Wall time: {_duration(t.get('wall_time_s'))}",
            f"- Seed: {_v(t.get('seed'))}",
            f"- MiM switches: {_v(switches)}"]


def _loss(value: Optional[float]) -> str:
    return NOT_RECORDED if value is None else f"{value:.4f}"


def _validation(record: Mapping) -> List[str]:
    val = record.get("validation") or {}
    first, last = val.get("first") or {}, val.get("last") or {}
    levels = sorted({k for k in list(first) + list(last) if k.startswith("rec_")})
    if not levels:
        return [f"Masked-token reconstruction loss on held-out crops: {NOT_RECORDED}"]
    lines = [f"Masked-token reconstruction loss on {_v(val.get('crops'))} fixed crops "
             f"({_v(val.get('held_out_cases'))} held-out cases; 1.0 = predicting each token's mean):", "",
             f"| level | start (step {first.get('step', '?')}) | end (step {last.get('step', '?')}) |", "|---|---|---|"]
    for k in levels:
        lines.append(f"| {k[len('rec_'):].upper()} | {_loss(first.get(k))} | {_loss(last.get(k))} |")
    return lines


def _finetune(record: Mapping, weights_name: str) -> List[str]:
    backbone, size = record.get("backbone"), record.get("size")
    trainer = TRAINERS.get(backbone, NOT_RECORDED)
    run_trainer = trainer
    if size == "tiny":       # the tiny sizes have short CPU variants only
        run_trainer = f"{trainer}_tiny_1epoch"
        trainer = f"{trainer}_tiny_<budget> (trainers/{TRAINERS.get(backbone)}.py lists them)"
    if backbone == "resenc":
        planner, plans = RESENC_PLANS.get(size, RESENC_PLANS["M" if size == "tiny" else "L"])
        plan_cmd = f"nnUNetv2_plan_and_preprocess -d DATASET -c 3d_fullres -pl {planner}"
    else:
        plans, plan_cmd = "nnUNetPlans", "nnUNetv2_plan_and_preprocess -d DATASET -c 3d_fullres"
    norm = record.get("normalisation") or {}
    ct = norm.get("CT") if (norm.get("CT") or {}).get("scheme") == "ct_window" else None
    lines = ["Stock nnU-Net 2.8 with this repository's trainers (`export nnUNet_extTrainer=$(mim_nnunet trainers-path)`):",
             "", "```", plan_cmd]
    if ct:
        lo, hi = ct["window"]
        variant = "MiMWindowPlans"
        lines += [f"mim_nnunet plans-variant -d DATASET -p {plans} -plans_name {variant} -ct_window {lo:g} {hi:g}",
                  f"nnUNetv2_preprocess -d DATASET -plans_name {variant} -c 3d_fullres"]
        plans = variant
    lines += [f"mim_nnunet set-weights -d DATASET -p {plans} {weights_name}",
              f"nnUNetv2_train DATASET 3d_fullres FOLD -tr {run_trainer} -p {plans}", "```", "",
              f"- Trainer: {trainer}; from-scratch twin for comparison: {SCRATCH.get(backbone, NOT_RECORDED)}."]
    if ct:
        lo, hi = ct["window"]
        lines.append(f"- Intensities: the plans variant `{plans}` gives CT channels the pre-training's window "
                     f"[{lo:g}, {hi:g}] HU scaled to [0, 1] (stock `CTNormalization` with intensity properties "
                     f"that encode the window); stock plans would z-score them instead.")
    elif norm.get("MRI"):
        lines.append("- Intensities: MRI channels were z-scored per case, as stock nnU-Net plans do "
                     "(`ZScoreNormalization`): no plans variant is needed.")
    else:
        lines.append(f"- Intensities: pre-training normalisation {NOT_RECORDED}; choose the plans yourself.")
    spacing = record.get("spacing")
    if spacing:
        lines.append(f"- Spacing: pre-trained at {_v(spacing, ' mm')} (z, y, x); `mim_nnunet plans-variant "
                     f"-spacing X Y Z` (x, y, z order) plans the dataset at another spacing.")
    lines.append("- Instead of `set-weights`: `MIM_PRETRAINED_WEIGHTS=<export> nnUNetv2_train ...`.")
    if backbone == "resenc":
        lines.append("- nnU-Net master / nnssl: `mim_nnunet export-nnssl <export> -o DIR` writes nnssl's "
                     "`checkpoint_final.pth` and `adaptation_plan.json` (docs/using-weights-elsewhere.md).")
    elif backbone == "swin":
        lines.append("- MONAI: the tensors load strictly into `SwinUNETR(...).swinViT` (docs/using-weights-elsewhere.md).")
    return lines


def card_text(record: Mapping, weights_name: str) -> str:
    """The card of an export whose record is ``record`` and whose weights file is named ``weights_name``."""
    pre = record.get("preprocessing") or {}
    axes = pre.get("array_axes")
    params = f"{record['num_parameters']:,}" if record.get("num_parameters") else NOT_RECORDED
    lines = [f"# Model card: {weights_name}", "",
             "Written by mim-nnunet from the export's record "
             f"(`{Path(weights_name).stem}.json`); a value the run did not record reads \"{NOT_RECORDED}\".", "",
             "## Model",
             f"- Backbone: {_v(record.get('backbone'))}, size {_v(record.get('size'))}",
             f"- Parameters: {params} "
             f"in {_v(record.get('num_tensors'))} tensors (the encoder; the pre-training decoder is not exported)",
             f"- Input channels: {_v(record.get('in_channels'))}",
             f"- Key map: {_v(record.get('key_map'))}",
             f"- Weights sha256: {_v(record.get('sha256'))}",
             f"- Created: {_v(record.get('created'))}",
             "", "## Data", *_data(record),
             "", "## Preprocessing",
             f"- Target spacing: {_v(record.get('spacing'), ' mm')}" + (" (z, y, x)" if record.get("spacing") else ""),
             f"- Orientation: {_v(pre.get('orientation'))}; array axis order: {_v(', '.join(axes) if axes else None)}",
             *_normalisation(record.get("normalisation")),
             *_nnssl(record.get("nnssl")),
             f"- Crop size S (network input): {_v(record.get('input_size'))} voxels; token size "
             f"{_v(record.get('token_size'))}",
             "", "## Training", *_training(record),
             "", "## Validation", *_validation(record),
             "", "## How to fine-tune", *_finetune(record, weights_name),
             "", "## Not validated for", *NOT_VALIDATED,
             "", "## Citation", "", "```bibtex", MIM_BIBTEX, "```",
             "", "## Licence",
             "- Weights: LICENCE TO FILL IN by whoever distributes them: the licences of the pre-training data "
             "under Data decide what may be done with weights trained on it.",
             "- Code that made them: mim-nnunet, Apache-2.0.", ""]
    return "\n".join(lines)


def write_card(weights: os.PathLike, record: Mapping) -> Path:
    """Write ``<name>.card.md`` beside the export (atomically) and return its path."""
    path = card_path(weights)
    text = card_text(record, Path(weights).name)
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
