"""The paper's fine-tuning recipes (Table 2) as data: ``plans/downstream/<name>.json``, one per segmentation
dataset, turned into nnU-Net plans variants by :func:`apply_recipe`.

A recipe holds ``spacing_mm`` and ``crop_size`` as ``(x, y, z)`` (the image's voxel axes, MONAI's ``pixdim``
and ``roi_x/roi_y/roi_z`` order), ``intensity`` (``{"scheme": "ct_window", "window_hu": [lo, hi]}`` or
``{"scheme": "zscore"}``), the ``augmentation`` probabilities Table 2 lists (or ``null``), how the dataset
reaches nnU-Net (``nnunet``), its ``source``, ``notes``, what is ``unknown``, and ``published`` result rows
of the paper (empty where we could not read them). The augmentation probabilities are recorded in the plans
variant; training keeps nnU-Net's own augmentation pipeline.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from ..common.environment import shipped_folder
from ..common.errors import MimError

RECIPES_FOLDER = "plans/downstream"
MARKER = "btcv.json"
REQUIRED = ("name", "title", "modality", "spacing_mm", "crop_size", "intensity", "augmentation", "nnunet", "source",
            "unknown", "published")
SCHEMES = ("ct_window", "zscore")


class RecipeError(MimError):
    pass


def recipes_dir() -> Path:
    return shipped_folder(RECIPES_FOLDER, MARKER)


def available_recipes() -> List[str]:
    return sorted(p.stem for p in recipes_dir().glob("*.json"))


def _check(recipe: Dict, where: str) -> Dict:
    missing = [k for k in REQUIRED if k not in recipe]
    if missing:
        raise RecipeError(f"{where}: missing field(s) {', '.join(missing)}")
    for key, kind in (("spacing_mm", float), ("crop_size", int)):
        values = recipe[key]
        if not (isinstance(values, list) and len(values) == 3 and all(isinstance(v, (int, float)) and v > 0
                                                                         for v in values)):
            raise RecipeError(f"{where}: '{key}' must be three positive numbers (x, y, z), got {values!r}")
        if kind is int and any(int(v) != v for v in values):
            raise RecipeError(f"{where}: 'crop_size' must be whole voxels, got {values!r}")
    scheme = recipe["intensity"].get("scheme")
    if scheme not in SCHEMES:
        raise RecipeError(f"{where}: intensity scheme '{scheme}' is not one of {', '.join(SCHEMES)}")
    if scheme == "ct_window":
        window = recipe["intensity"].get("window_hu")
        if not (isinstance(window, list) and len(window) == 2 and window[1] > window[0]):
            raise RecipeError(f"{where}: 'window_hu' must be [lower, upper] with upper > lower, got {window!r}")
    return recipe


def load_recipe(name_or_path: str) -> Dict:
    """A recipe by name (``plans/downstream/<name>.json``) or path, checked."""
    path = Path(name_or_path)
    if not (path.suffix == ".json" and path.is_file()):
        path = recipes_dir() / f"{name_or_path}.json"
        if not path.is_file():
            raise RecipeError(f"recipe '{name_or_path}': not found; available: {', '.join(available_recipes())}")
    try:
        recipe = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise RecipeError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    return _check(recipe, str(path))


def window(recipe: Dict) -> Optional[List[float]]:
    intensity = recipe["intensity"]
    return [float(v) for v in intensity["window_hu"]] if intensity["scheme"] == "ct_window" else None


def variant_name(recipe: Dict, source_plans: str = "nnUNetPlans") -> str:
    return f"{source_plans}_{recipe['name']}"


def apply_recipe(dataset: str, recipe: Dict, source_plans: str = "nnUNetPlans", plans_name: Optional[str] = None,
                 configurations: Sequence[str] = ("3d_fullres",), gpu_memory_target_gb: Optional[float] = None,
                 log=print) -> Path:
    """Write the plans variant of ``recipe`` for ``dataset``: spacing, crop size as patch size and, for CT
    recipes, the HU window; return the plans file."""
    from ..finetune.plans_variants import write_plans_variant
    name = plans_name or variant_name(recipe, source_plans)
    return write_plans_variant(
        dataset, name, source_plans=source_plans, spacing=recipe["spacing_mm"], patch_size=recipe["crop_size"],
        ct_window=window(recipe), configurations=configurations, gpu_memory_target_gb=gpu_memory_target_gb,
        record={"recipe": recipe["name"], "recipe_source": recipe["source"],
                "augmentation": recipe["augmentation"],
                "augmentation_note": "Table 2's probabilities, recorded only: training uses nnU-Net's own "
                                     "augmentation pipeline"},
        log=log)
