"""The demo's report folder: scores (DSC and NSD per class, MiM vs scratch), training curves,
reconstructions and overlays of predictions on CT slices, summarised in ``summary.md``."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Dict, List

import numpy as np
import SimpleITK as sitk

from ..common.atomic import atomic_write, write_json_atomic
from ..common.figures import plt, save_figure
from ..evaluation import class_names, evaluate_folders

OVERLAY_WINDOW = (-200.0, 300.0)   # HU shown in overlay pictures (soft tissue)
COLOURS = np.array([[0, 0, 0], [0.9, 0.2, 0.2], [0.2, 0.8, 0.2], [0.2, 0.4, 1.0], [1.0, 0.8, 0.1], [0.8, 0.3, 0.9]])


def overlay_case(image: Path, label: Path, predictions: Dict[str, Path], out: Path, names: Dict[int, str]) -> Path:
    """CT slice with the most labelled voxels; label and each prediction overlaid, one panel each."""
    ct = sitk.GetArrayFromImage(sitk.ReadImage(str(image))).astype(np.float32)
    maps = {"label": sitk.GetArrayFromImage(sitk.ReadImage(str(label)))}
    maps.update({k: sitk.GetArrayFromImage(sitk.ReadImage(str(p))) for k, p in predictions.items()})
    z = int(np.argmax((maps["label"] > 0).reshape(maps["label"].shape[0], -1).sum(1)))
    lo, hi = OVERLAY_WINDOW
    fig, axes = plt.subplots(1, len(maps), figsize=(4 * len(maps), 4.4), squeeze=False)
    for ax, (title, m) in zip(axes[0], maps.items()):
        ax.imshow(np.clip(ct[z], lo, hi), cmap="gray", vmin=lo, vmax=hi)
        rgba = np.zeros((*m[z].shape, 4))
        rgba[..., :3] = COLOURS[np.clip(m[z], 0, len(COLOURS) - 1)]
        rgba[..., 3] = 0.45 * (m[z] > 0)
        ax.imshow(rgba)
        ax.set_title(f"{title} (slice {z})")
        ax.axis("off")
    handles = [plt.Rectangle((0, 0), 1, 1, color=COLOURS[c]) for c in sorted(names)]
    fig.legend(handles, [names[c] for c in sorted(names)], loc="lower center", ncol=len(names), fontsize=8)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    save_figure(fig, out)
    return out


def _copy(src: Path, dst: Path) -> bool:
    if src.is_file():
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, dst)
        return True
    return False


def write_report(folder: Path, dataset: Path, results: Dict[str, Dict], pretrain_dir: Path, spec: Dict,
                 setting: str, timings: Dict[str, float], total_seconds: float) -> Path:
    """Write the report; ``results[kind]`` holds ``trainer``, ``model`` and ``predictions`` folders."""
    folder = Path(folder)
    names = class_names(dataset / "dataset.json")
    scores = {}
    for kind, r in results.items():
        scores[kind] = evaluate_folders(r["predictions"], dataset / "labelsTs")
        write_json_atomic(folder / f"scores_{kind}.json", scores[kind])
    files: List[str] = []
    if _copy(pretrain_dir / "progress.png", folder / "progress_pretrain.png"):
        files.append("progress_pretrain.png")
    recons = sorted((pretrain_dir / "reconstructions").glob("step_*.png"))
    if recons and _copy(recons[-1], folder / "reconstructions.png"):
        files.append(f"reconstructions.png (pre-training, {recons[-1].stem})")
    for kind, r in results.items():
        if _copy(r["model"] / "fold_all" / "progress.png", folder / f"progress_finetune_{kind}.png"):
            files.append(f"progress_finetune_{kind}.png")
    for label in sorted((dataset / "labelsTs").glob("*.nii.gz")):
        case = label.name[:-len(".nii.gz")]
        out = overlay_case(dataset / "imagesTs" / f"{case}_0000.nii.gz", label,
                           {k: r["predictions"] / label.name for k, r in results.items()},
                           folder / f"overlay_{case}.png", names)
        files.append(out.name)

    kinds = list(results)
    header = "| class | " + " | ".join(f"{k} DSC (%) | {k} NSD (%)" for k in kinds) + " |"
    lines = [header, "|---|" + "---|---|" * len(kinds)]
    for c in scores[kinds[0]]["mean"]:
        cells = " | ".join(f"{100 * scores[k]['mean'][c]['dsc']:.1f} | {100 * scores[k]['mean'][c]['nsd']:.1f}"
                           for k in kinds)
        lines.append(f"| {names.get(int(c), c)} | {cells} |")
    lines.append("| **mean** | " + " | ".join(f"{100 * scores[k]['overall']['dsc']:.1f} | "
                                             f"{100 * scores[k]['overall']['nsd']:.1f}" for k in kinds) + " |")
    tolerance = scores[kinds[0]]["nsd_tolerance_mm"]
    text = f"""# mim-nnunet demo report ({setting})

## Data
{spec['about']}
- Pre-training: the `demo` collection ({len(spec['pretrain'])} CT volumes: {', '.join(p['name'] for p in spec['pretrain'])}).
  They include the CTs the held-out halves are cut from (unlabelled; no label is used in pre-training):
  with three real volumes there is nothing else to pre-train on, so the setting is transductive.
- Fine-tuning: {spec['split']}. Classes: {', '.join(names[c] for c in sorted(names))} ({spec['class_source']}).

## Scores
Held-out halves, DSC and NSD (tolerance {tolerance:g} mm, MONAI metrics; a class absent from both label
and prediction scores 1, from one of them 0). Same network (MiMUNETR tiny), same budget:
{', '.join(f"{k}: `{r['trainer']}`" for k, r in results.items())}.

{chr(10).join(lines)}

## Run time
{chr(10).join(f"- {k}: {v:.0f} s" for k, v in timings.items())}
- total: {total_seconds:.0f} s

## Files
{chr(10).join(f"- {f}" for f in files)}
- scores_<kind>.json: per case and class
"""
    atomic_write(folder / "summary.md", lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return folder
