"""The demo's report folder: scores (DSC and NSD per class, MiM vs scratch), training curves,
reconstructions and overlays of predictions on CT slices, summarised in ``summary.md``."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from ..common.atomic import atomic_write, write_json_atomic
from ..common.figures import RADIOLOGICAL_ORIENTATION, plt, save_figure
from ..evaluation import absent_notes, class_names, evaluate_folders, percent

OVERLAY_WINDOW = (-200.0, 300.0)   # HU shown in overlay pictures (soft tissue)
COLOURS = np.array([[0, 0, 0], [0.9, 0.2, 0.2], [0.2, 0.8, 0.2], [0.2, 0.4, 1.0], [1.0, 0.8, 0.1], [0.8, 0.3, 0.9]])


def display_array(path: Path) -> np.ndarray:
    """The image at ``path`` as a (z, y, x) array whose axial slices are in the radiological view as they are,
    whatever the direction cosines of the file (the demo's CTs come as LPS and as RAS)."""
    return sitk.GetArrayFromImage(sitk.DICOMOrient(sitk.ReadImage(str(path)), RADIOLOGICAL_ORIENTATION))


def overlay_case(image: Path, label: Path, predictions: Dict[str, Path], out: Path, names: Dict[int, str]) -> Path:
    """CT slice with the most labelled voxels; label and each prediction overlaid, one panel each."""
    ct = display_array(image).astype(np.float32)
    maps = {"label": display_array(label)}
    maps.update({k: display_array(p) for k, p in predictions.items()})
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


def pretraining_validation(pretrain_dir: Path) -> Dict:
    """The validation reconstruction loss per level at the first and last validation of the run."""
    from ..pretrain.logbook import read_records
    from ..pretrain.validation import validation_summary
    return validation_summary(read_records(pretrain_dir / "log.jsonl"))


def spread(values: List[Optional[float]]) -> str:
    """``mean ± half range`` in percent over seeds (just the value for one seed); seeds where the class was
    absent from every reference and prediction (``None``) are left out, "absent" if all are."""
    values = [v for v in values if v is not None]
    if not values:
        return "absent"
    mean = 100 * float(np.mean(values))
    if len(values) < 2:
        return f"{mean:.1f}"
    return f"{mean:.1f} ± {50 * (max(values) - min(values)):.1f}"


def verdict(mim: List[Optional[float]], scratch: List[Optional[float]]) -> str:
    """Whether the difference of the means exceeds the seed-to-seed spread (max - min) of either."""
    mim, scratch = [v for v in mim if v is not None], [v for v in scratch if v is not None]
    if not mim or not scratch:
        return "no score (the class is absent from every reference and prediction)"
    diff = 100 * (np.mean(mim) - np.mean(scratch))
    widest = 100 * max(max(mim) - min(mim), max(scratch) - min(scratch))
    if len(mim) < 2:
        return f"MiM - scratch = {diff:+.1f} points (one seed: no spread to compare with)"
    larger = "larger" if abs(diff) > widest else "not larger"
    return (f"MiM - scratch = {diff:+.1f} points; the widest seed-to-seed range is {widest:.1f} points: the "
            f"difference is {larger} than the spread")


def run_time_lines(timings: Dict[str, float], total_seconds: float, host=None,
                   estimate: Sequence[Tuple[str, float]] = ()) -> List[str]:
    """The report's "Run time" lines: each step's seconds, the total, the host they were measured on
    (a :class:`mim_nnunet.common.host.HostProbe`) and the estimate printed before the run."""
    lines = [f"- {k}: {v:.0f} s" for k, v in timings.items()] + [f"- total: {total_seconds:.0f} s"]
    if host is not None:
        lines.append(f"- {host.line()} (host.json)")
    if estimate:
        lines.append(f"- estimated before the run: {sum(s for _, s in estimate):.0f} s ("
                     + ", ".join(f"{name} {s:.0f} s" for name, s in estimate) + ")")
    return lines


def write_report(folder: Path, dataset: Path, results: Dict[str, Dict], pretrain_dir: Path, spec: Dict,
                 setting: str, timings: Dict[str, float], total_seconds: float, host=None,
                 estimate: Sequence[Tuple[str, float]] = ()) -> Path:
    """Write the report. ``results["<label>/<seed>/<kind>"]`` holds ``label``, ``seed``, ``kind``,
    ``trainer``, ``model``, ``fold`` and ``predictions`` (a folder of the held-out halves' predictions);
    ``host``: the probe of the host that ran it (``host.json``); ``estimate``: ``[(stage, seconds)]``."""
    folder = Path(folder)
    if host is not None:
        write_json_atomic(folder / "host.json", host.as_dict())
    names = class_names(dataset / "dataset.json")
    scores: Dict[str, Dict] = {}
    for key, r in results.items():
        scores[key] = evaluate_folders(Path(r["predictions"]), dataset / "labelsTs")
        write_json_atomic(folder / f"scores_{r['label']}_seed{r['seed']}_{r['kind']}.json", scores[key])
    labels = sorted({r["label"] for r in results.values()}, key=["all", "one"].index)
    seeds = sorted({r["seed"] for r in results.values()})
    kinds = sorted({r["kind"] for r in results.values()}, key=["MiM", "scratch"].index)
    classes = list(next(iter(scores.values()))["mean"])

    def values(label: str, kind: str, cls=None, metric: str = "dsc") -> List[float]:
        picked = [scores[f"{label}/{seed}/{kind}"] for seed in seeds]
        return [s["overall"][metric] if cls is None else s["mean"][cls][metric] for s in picked]

    sections = []
    for label in labels:
        title = {"all": "both labelled training halves", "one": f"one labelled case ({spec['one_labelled_case']})"}[label]
        header = "| class | " + " | ".join(f"{k} DSC (%) | {k} NSD (%)" for k in kinds) + " |"
        lines = [f"### Trained on {title}", "", f"Mean ± half range over seeds {seeds}:", "", header,
                 "|---|" + "---|---|" * len(kinds)]
        for c in classes:
            cells = " | ".join(f"{spread(values(label, k, c))} | {spread(values(label, k, c, 'nsd'))}" for k in kinds)
            lines.append(f"| {names.get(int(c), c)} | {cells} |")
        lines.append("| **mean** | " + " | ".join(f"{spread(values(label, k))} | {spread(values(label, k, None, 'nsd'))}"
                                                 for k in kinds) + " |")
        if set(kinds) == {"MiM", "scratch"}:
            lines += ["", f"Mean DSC: {verdict(values(label, 'MiM'), values(label, 'scratch'))}."]
            liver = next((c for c in classes if names.get(int(c)) == "liver"), None)
            if liver is not None:
                lines.append(f"Liver DSC: {verdict(values(label, 'MiM', liver), values(label, 'scratch', liver))}.")
        lines += ["", "Per seed (mean DSC / liver DSC, %):", "",
                  "| seed | " + " | ".join(kinds) + " |", "|---|" + "---|" * len(kinds)]
        for seed in seeds:
            cells = []
            for k in kinds:
                s = scores[f"{label}/{seed}/{k}"]
                liver = next((c for c in classes if names.get(int(c)) == "liver"), None)
                cells.append(f"{percent(s['overall']['dsc'], 1)} / "
                             + (percent(s['mean'][liver]['dsc'], 1) if liver is not None else "-"))
            lines.append(f"| {seed} | " + " | ".join(cells) + " |")
        sections.append("\n".join(lines))

    files: List[str] = []
    if _copy(pretrain_dir / "progress.png", folder / "progress_pretrain.png"):
        files.append("progress_pretrain.png (pre-training: losses, validation reconstruction loss, lr)")
    recons = sorted((pretrain_dir / "reconstructions").glob("step_*.png"))
    if recons and _copy(recons[-1], folder / "reconstructions.png"):
        files.append(f"reconstructions.png (pre-training, {recons[-1].stem}: a fixed validation crop)")
    first = {k: r for k, r in results.items() if r["label"] == labels[0] and r["seed"] == seeds[0]}
    for r in first.values():
        if _copy(Path(r["model"]) / f"fold_{r['fold']}" / "progress.png", folder / f"progress_finetune_{r['kind']}.png"):
            files.append(f"progress_finetune_{r['kind']}.png ({labels[0]} labelled, seed {seeds[0]})")
    for label_file in sorted((dataset / "labelsTs").glob("*.nii.gz")):
        case = label_file.name[:-len(".nii.gz")]
        out = overlay_case(dataset / "imagesTs" / f"{case}_0000.nii.gz", label_file,
                           {r["kind"]: Path(r["predictions"]) / label_file.name for r in first.values()},
                           folder / f"overlay_{case}.png", names)
        files.append(f"{out.name} ({labels[0]} labelled, seed {seeds[0]})")

    val = pretraining_validation(pretrain_dir)
    if val:
        levels = [k for k in val["first"] if k != "step"]
        pre_lines = ["| | step | " + " | ".join(levels) + " |", "|---|---|" + "---|" * len(levels)]
        for when in ("first", "last"):
            pre_lines.append(f"| {when} | {val[when]['step']} | " + " | ".join(f"{val[when][k]:.3f}" for k in levels) + " |")
        pretraining = (f"Validation reconstruction loss (masked, non-constant tokens of {val['crops']} fixed crops; "
                       f"1.0 = predicting each token's mean):\n\n" + "\n".join(pre_lines))
    else:
        pretraining = "No validation record in the pre-training log."
    tolerance = next(iter(scores.values()))["nsd_tolerance_mm"]
    notes = sorted({f"{key}: {note}" for key, s in scores.items() for note in absent_notes(s, names)})
    absent = ("\nLeft out of means:\n" + "\n".join(f"- {n}" for n in notes) + "\n") if notes else ""
    recipe = spec["recipe"]
    text = f"""# mim-nnunet demo report ({setting})

## Data
{spec['about']}
- Pre-training: the `demo` collection ({len(spec['pretrain'])} CT volumes: {', '.join(p['name'] for p in spec['pretrain'])}).
  They include the CTs the held-out halves are cut from (unlabelled; no label is used in pre-training):
  with three real volumes there is nothing else to pre-train on, so the setting is transductive.
- Fine-tuning: {spec['split']}. Classes: {', '.join(names[c] for c in sorted(names))} ({spec['class_source']}).
- Data settings (both networks): spacing {recipe['spacing_xyz']} mm, CT window {recipe['window']} HU scaled to [0, 1] (the
  pre-training scale), patch {recipe['patch_xyz']} (x, y, z).

## Pre-training
{pretraining}

## Scores
Held-out halves, DSC and NSD (tolerance {tolerance:g} mm, MONAI metrics; a class absent from one of label
and prediction scores 0; a case where it is absent from both is left out of that class's mean, as in
nnU-Net). Same network (MiMUNETR tiny), same budget, same seeds:
{', '.join(f"{k}: `{r['trainer']}`" for k, r in first.items())}.
{absent}

{chr(10).join(s + chr(10) for s in sections)}
## Run time
{chr(10).join(run_time_lines(timings, total_seconds, host, estimate))}

## Files
{chr(10).join(f"- {f}" for f in files)}
- scores_<label>_seed<seed>_<kind>.json: per case and class
"""
    atomic_write(folder / "summary.md", lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return folder
