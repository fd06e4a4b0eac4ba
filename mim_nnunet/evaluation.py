"""DSC and NSD per class, as the MiM paper reports them, with MONAI's metrics.

Conventions for empty masks (MONAI leaves them undefined), as nnU-Net's own evaluation: a class absent from
both the label and the prediction of a case has no score there (``None``: nothing to find, nothing found) and
is left out of that class's mean; absent from one of them, it scores 0. A class absent from every case has no
mean (``None``, printed "absent") and is left out of the mean over classes.
NSD is MONAI's ``SurfaceDiceMetric`` with the tolerance in millimetres and the image spacing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import SimpleITK as sitk
import torch
from monai.metrics import DiceMetric, SurfaceDiceMetric

from .common.errors import MimError
from .data.image_io import geometry_difference, read_image

DEFAULT_NSD_TOLERANCE_MM = 1.0


class EvaluationError(MimError):
    pass


def class_scores(pred: np.ndarray, label: np.ndarray, classes: Sequence[int], spacing: Sequence[float],
                 tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM) -> Dict[int, Dict[str, Optional[float]]]:
    """``{class: {"dsc": .., "nsd": ..}}`` for integer label maps ``pred``, ``label`` ``(X, Y, Z)``;
    ``spacing`` in mm along the same axes. ``None`` where the class is absent from both."""
    scores = {}
    for c in classes:
        p, g = pred == c, label == c
        if not p.any() and not g.any():
            scores[int(c)] = {"dsc": None, "nsd": None}
            continue
        if not p.any() or not g.any():
            scores[int(c)] = {"dsc": 0.0, "nsd": 0.0}
            continue
        onehot = lambda m: torch.from_numpy(np.stack([~m, m]))[None].float()    # (1, 2, X, Y, Z)
        yp, yg = onehot(p), onehot(g)
        dsc = DiceMetric(include_background=False, reduction="none")(yp, yg)
        nsd = SurfaceDiceMetric(class_thresholds=[tolerance_mm], include_background=False, reduction="none")(
            yp, yg, spacing=[float(s) for s in spacing])
        scores[int(c)] = {"dsc": float(dsc[0, 0]), "nsd": float(nsd[0, 0])}
    return scores


def listed_classes(dataset_json: Path) -> Optional[List[int]]:
    """The non-zero label values a ``dataset.json`` lists (None: no such file)."""
    names = class_names(dataset_json)
    return sorted(c for c in names if c != 0) if Path(dataset_json).is_file() else None


def evaluate_folders(pred_dir: Path, label_dir: Path, classes: Optional[Sequence[int]] = None,
                     tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM, suffix: str = ".nii.gz",
                     dataset_json: Optional[Path] = None) -> Dict:
    """Scores of every label in ``label_dir`` against the same-named file in ``pred_dir``:
    ``{"cases": {case: {class: {dsc, nsd}}}, "mean": {class: {dsc, nsd}}, "overall": {dsc, nsd},
    "counted": {class: number of cases in its mean}, "absent": {class: [cases absent from both]},
    "classes": [..], "classes_from": .., "warnings": [..]}``; a score is ``None`` where nothing counts.

    Every case is scored on the same classes, so a false positive on a case whose reference lacks the class
    counts (0) instead of being skipped: ``classes`` if given, else those ``dataset_json`` lists (default:
    ``dataset.json`` next to ``label_dir``, as in nnU-Net's raw layout), else the union of the values of all
    references and predictions."""
    pred_dir, label_dir = Path(pred_dir), Path(label_dir)
    for folder in (pred_dir, label_dir):
        if not folder.is_dir():
            raise EvaluationError(f"{folder}: no such folder")
    labels = sorted(label_dir.glob(f"*{suffix}"))
    if not labels:
        raise EvaluationError(f"{label_dir}: no *{suffix} label files")
    missing = [p.name for p in labels if not (pred_dir / p.name).is_file()]
    if missing:
        raise EvaluationError(f"{pred_dir}: no prediction for {len(missing)} case(s): {', '.join(missing[:5])}")
    pairs = {}
    for path in labels:
        label_img, pred_img = read_image(str(path)), read_image(str(pred_dir / path.name))
        problem = geometry_difference(pred_img, label_img)
        if problem:
            raise EvaluationError(f"{pred_dir / path.name}: geometry differs from {path} ({problem})")
        pairs[path.name[:-len(suffix)]] = (sitk.GetArrayFromImage(pred_img), sitk.GetArrayFromImage(label_img),
                                           label_img.GetSpacing()[::-1])     # array axes are (z, y, x)
    seen = {"reference": set(), "prediction": set()}
    for pred, label, _ in pairs.values():
        seen["reference"].update(int(c) for c in np.unique(label) if c != 0)
        seen["prediction"].update(int(c) for c in np.unique(pred) if c != 0)
    dataset_json = Path(dataset_json) if dataset_json else label_dir.parent / "dataset.json"
    listed = listed_classes(dataset_json)
    warnings = []
    if classes:
        wanted, source = sorted(int(c) for c in classes), "given"
    elif listed:
        wanted, source = listed, str(dataset_json)
    else:
        wanted, source = sorted(seen["reference"] | seen["prediction"]), "union of the references and predictions"
    if listed:
        for where, values in seen.items():
            extra = sorted(values - set(listed))
            if extra:
                warnings.append(f"{where} label value(s) {extra} are not listed in {dataset_json}")
    cases = {case: class_scores(pred, label, wanted, spacing, tolerance_mm)
             for case, (pred, label, spacing) in pairs.items()}
    mean, counted, absent = {}, {}, {}
    for c in wanted:
        absent[c] = [case for case, s in cases.items() if s[c]["dsc"] is None]
        counted[c] = len(cases) - len(absent[c])
        mean[c] = {m: _mean([s[c][m] for s in cases.values()]) for m in ("dsc", "nsd")}
    overall = {m: _mean([v[m] for v in mean.values()]) for m in ("dsc", "nsd")}
    return {"cases": cases, "mean": mean, "overall": overall, "counted": counted, "absent": absent,
            "nsd_tolerance_mm": tolerance_mm, "classes": wanted, "classes_from": source, "warnings": warnings}


def _mean(values: Sequence[Optional[float]]) -> Optional[float]:
    """Mean of the values that are not ``None`` (nnU-Net's nanmean); ``None`` if there are none."""
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def percent(value: Optional[float], digits: int = 2) -> str:
    """A score in percent, or "absent" where the class was absent from reference and prediction alike."""
    return "absent" if value is None else f"{100 * value:.{digits}f}"


def absent_notes(result: Dict, names: Optional[Dict[int, str]] = None) -> List[str]:
    """One line per class left out of some cases' means, naming the cases (or one saying nothing was scored)."""
    names, total, lines = names or {}, len(result["cases"]), []
    if not result["classes"]:
        lines.append("no class to score: every reference and prediction is background only (name the classes with "
                     "-labels or a dataset.json)")
    for c, where in result["absent"].items():
        if where:
            lines.append(f"{names.get(int(c), c)}: absent from reference and prediction in {len(where)} of {total} "
                         f"case(s) ({', '.join(where[:5])}{' ...' if len(where) > 5 else ''}): left out of its mean")
    return lines


def markdown_table(result: Dict, names: Optional[Dict[int, str]] = None) -> str:
    """Per-class DSC and NSD (in %) and their mean, like the paper's tables, with the number of cases each
    class's mean covers (cases where the class is absent from reference and prediction are left out) and the
    number of classes the mean over classes covers."""
    names, total = names or {}, len(result["cases"])
    lines = ["| class | DSC (%) | NSD (%) | mean of |", "|---|---|---|---|"]
    for c, v in result["mean"].items():
        lines.append(f"| {names.get(int(c), c)} | {percent(v['dsc'])} | {percent(v['nsd'])} | "
                     f"{result['counted'][c]} of {total} cases |")
    scored = sum(v["dsc"] is not None for v in result["mean"].values())
    lines.append(f"| **mean** | {percent(result['overall']['dsc'])} | {percent(result['overall']['nsd'])} | "
                 f"{scored} of {len(result['mean'])} classes |")
    return "\n".join(lines)


def class_names(dataset_json: Optional[Path]) -> Dict[int, str]:
    if dataset_json is None or not Path(dataset_json).is_file():
        return {}
    labels = json.loads(Path(dataset_json).read_text(encoding="utf-8")).get("labels", {})
    return {int(v): k for k, v in labels.items() if isinstance(v, int)}

