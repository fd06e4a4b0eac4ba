"""nnU-Net plans variants: a dataset's plans copied under a new name with another target spacing, patch size
and/or CT intensity window, for the stock commands::

    nnUNetv2_preprocess -d ID -plans_name NAME -c 3d_fullres
    nnUNetv2_train ID 3d_fullres 0 -tr nnUNetTrainerMiM -p NAME

The source plans file is read, never written. Every configuration of the variant gets its own
``data_identifier`` (``<NAME>_<configuration>``, nnU-Net's own rule), so its preprocessed data never lands in
the folders of the source plans.

**Intensity window.** nnU-Net's ``CTNormalization`` maps a voxel ``x`` of a CT channel to
``(clip(x, percentile_00_5, percentile_99_5) - mean) / std`` with the values of the plans'
``foreground_intensity_properties_per_channel``. Setting ``percentile_00_5 = mean = lo``,
``percentile_99_5 = hi`` and ``std = hi - lo`` gives ``(clip(x, lo, hi) - lo) / (hi - lo)``: the window
``[lo, hi]`` HU scaled to ``[0, 1]``, as MONAI's ``ScaleIntensityRanged(a_min=lo, a_max=hi, b_min=0, b_max=1,
clip=True)`` does in the MiM and SwinUNETR fine-tuning scripts (and ``[-1000, 1000]`` is the pre-training scale). It is
applied to the channels whose normalisation scheme is ``CTNormalization`` and to no other.

**Spacing and patch size** (``(x, y, z)``: the image's voxel axes in SimpleITK/MONAI order, as the paper's
Table 2 lists them; the plans hold them as nnU-Net's ``(z, y, x)`` permuted by ``transpose_forward``). A new
spacing is planned by nnU-Net's own experiment planner (the one named in the source plans): median image
size at that spacing, patch size, network topology, batch size. A given patch size replaces the planned
one; the U-Net topology for it comes from nnU-Net's ``get_pool_and_conv_props`` (which enlarges an axis that
its poolings cannot divide) and the batch size from the planner's memory estimate, as nnU-Net's planner
computes them. Our SwinUNETR/MiMUNETR trainers round the patch to multiples of 32 when they start.

**Orientation.** nnU-Net trains on the arrays as they are stored; MiM's pre-training store orients every case
RAS. The variant records the orientation codes of the training images (headers in ``nnUNet_raw``) and warns
when some are not RAS.
"""

from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from ..common.atomic import write_json_atomic
from ..common.errors import PlansError
from ..data.fingerprint import orientation_code
from ..data.preprocess import STORE_ORIENTATION
from ..networks.swinunetr import SWINUNETR_PATCH_MULTIPLE

VARIANT_KEY = "mim_nnunet_variant"       # top-level record in the variant's plans (nnU-Net ignores it)
CT_SCHEME = "CTNormalization"
PLANS_NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]*"


def window_properties(lo: float, hi: float) -> Dict[str, float]:
    """CTNormalization's intensity properties that make it ``(clip(x, lo, hi) - lo) / (hi - lo)``."""
    lo, hi = float(lo), float(hi)
    if not hi > lo:
        raise PlansError(f"intensity window [{lo:g}, {hi:g}]: the upper bound must be above the lower one")
    return {"percentile_00_5": lo, "percentile_99_5": hi, "mean": lo, "std": hi - lo}


def to_plans_axes(values_xyz: Sequence[float], transpose_forward: Sequence[int]) -> List[float]:
    """``(x, y, z)`` values (SimpleITK/MONAI order) in the order of nnU-Net's plans: ``(z, y, x)`` permuted by
    ``transpose_forward``."""
    if len(values_xyz) != 3:
        raise PlansError(f"{list(values_xyz)}: three values (x, y, z) expected")
    zyx = list(values_xyz)[::-1]
    return [zyx[i] for i in transpose_forward]


def from_plans_axes(values: Sequence[float], transpose_forward: Sequence[int]) -> List[float]:
    """The inverse of :func:`to_plans_axes`."""
    zyx = [0.0] * 3
    for position, axis in enumerate(transpose_forward):
        zyx[axis] = values[position]
    return zyx[::-1]


def _planner(plans: Dict, dataset: str, new_name: str, gpu_memory_target_gb: Optional[float]):
    """nnU-Net's experiment planner that wrote ``plans`` (needs the raw dataset and its fingerprint)."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    planner_class = PlansManager(plans).experiment_planner_class
    if planner_class is None:
        raise PlansError(f"experiment planner '{plans.get('experiment_planner_used')}' of the source plans is not "
                         f"part of this nnU-Net; cannot re-plan for another spacing or patch size")
    kwargs = {"plans_name": new_name}
    if gpu_memory_target_gb is not None:
        kwargs["gpu_memory_target_in_gb"] = float(gpu_memory_target_gb)
    try:
        return planner_class(dataset, **kwargs)
    except (RuntimeError, FileNotFoundError, AssertionError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise PlansError(f"dataset {dataset}: nnU-Net's planner cannot start ({reason}); the raw dataset and "
                         f"dataset_fingerprint.json (nnUNetv2_extract_fingerprint) are needed") from None


def _median_shape(planner, spacing_zyx: Sequence[float], transpose_forward: Sequence[int]) -> Tuple[np.ndarray, float]:
    """Median image size (transposed) at ``spacing_zyx`` and the approximate number of voxels of the training set,
    as nnU-Net's ``ExperimentPlanner.plan_experiment`` computes them from the fingerprint."""
    from nnunetv2.preprocessing.resampling.default_resampling import compute_new_shape
    fingerprint = planner.dataset_fingerprint
    shapes = [compute_new_shape(shape, spacing, spacing_zyx)
              for spacing, shape in zip(fingerprint["spacings"], fingerprint["shapes_after_crop"])]
    median = np.median(shapes, 0)[list(transpose_forward)]
    return median, float(np.prod(median, dtype=np.float64) * planner.dataset_json["numTraining"])


def _fixed_patch(planner, planned: Dict, spacing: Sequence[float], patch: Sequence[int], n_voxels: float) -> Dict:
    """``planned`` with ``patch`` (plans axes): topology and batch size for it, as nnU-Net's planner derives them."""
    from nnunetv2.experiment_planning.experiment_planners.network_topology import (
        get_pool_and_conv_props,
    )
    _, pools, convs, used, _ = get_pool_and_conv_props(list(spacing), list(patch),
                                                      planner.UNet_featuremap_min_edge_length, 999999)
    stages = len(pools)
    architecture = copy.deepcopy(planned["architecture"])
    kwargs = architecture["arch_kwargs"]
    kwargs.update({"n_stages": stages, "kernel_sizes": convs, "strides": pools,
                   "features_per_stage": [min(planner.UNet_max_features_3d, planner.UNet_base_num_features * 2 ** i)
                                          for i in range(stages)]})
    for key in ("n_conv_per_stage", "n_blocks_per_stage"):
        if key in kwargs:
            kwargs[key] = list(planner.UNet_blocks_per_stage_encoder[:stages])
    if "n_conv_per_stage_decoder" in kwargs:
        kwargs["n_conv_per_stage_decoder"] = list(planner.UNet_blocks_per_stage_decoder[:stages - 1])
    channels = len(planner.dataset_json.get("channel_names", planner.dataset_json.get("modality", {})))
    estimate = planner.static_estimate_VRAM_usage(tuple(int(p) for p in used), channels,
                                                  len(planner.dataset_json["labels"]),
                                                  architecture["network_class_name"], kwargs,
                                                  architecture["_kw_requires_import"])
    # nnU-Net's batch size rule (ExperimentPlanner.get_plans_for_configuration): memory headroom x reference
    # batch, at most 5 % of the training voxels per step, at least the planner's minimum
    reference = planner.UNet_reference_val_3d * planner.UNet_vram_target_GB / planner.UNet_reference_val_corresp_GB
    batch = round(reference / estimate * planner.UNet_reference_val_corresp_bs_3d)
    cap = round(n_voxels * planner.max_dataset_covered / np.prod(used, dtype=np.float64))
    batch = max(min(batch, cap), planner.UNet_min_batch_size)
    return {**planned, "patch_size": [int(p) for p in used], "architecture": architecture, "batch_size": int(batch)}


def _replan(planner, plans: Dict, configuration: str, new_name: str, spacing_xyz: Optional[Sequence[float]],
            patch_xyz: Optional[Sequence[int]], log) -> Dict:
    """Write the new spacing/patch into ``plans['configurations'][configuration]``; return what changed."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    resolved = PlansManager(plans).get_configuration(configuration).configuration
    if len(resolved["patch_size"]) != 3:
        raise PlansError(f"configuration '{configuration}' is {len(resolved['patch_size'])}D; spacing and patch "
                         f"size variants are for 3D configurations")
    transpose = plans["transpose_forward"]
    spacing = [float(s) for s in to_plans_axes(spacing_xyz, transpose)] if spacing_xyz is not None \
        else [float(s) for s in resolved["spacing"]]
    if any(s <= 0 for s in spacing):
        raise PlansError(f"spacing {list(spacing_xyz)}: every value must be positive (mm)")
    median, n_voxels = _median_shape(planner, from_plans_axes(spacing, transpose)[::-1], transpose)
    identifier = f"{new_name}_{configuration}"
    if spacing_xyz is not None:
        planned = planner.get_plans_for_configuration(spacing, median, identifier, n_voxels, {})
    else:
        planned = {k: copy.deepcopy(resolved[k]) for k in ("patch_size", "architecture", "batch_size")}
    requested = None
    if patch_xyz is not None:
        requested = [int(p) for p in to_plans_axes(patch_xyz, transpose)]
        if any(p < 1 for p in requested):
            raise PlansError(f"patch size {list(patch_xyz)}: every value must be a positive number of voxels")
        planned = _fixed_patch(planner, planned, spacing, requested, n_voxels)
        if planned["patch_size"] != requested:
            log(f"{configuration}: patch size {requested} -> {planned['patch_size']} (plans axes): nnU-Net's U-Net "
                f"pools each axis until it is divisible (get_pool_and_conv_props)")
    new = {"spacing": spacing, "patch_size": [int(p) for p in planned["patch_size"]],
           "median_image_size_in_voxels": [float(m) for m in median], "batch_size": int(planned["batch_size"]),
           "architecture": planned["architecture"], "data_identifier": identifier}
    changes = {k: [resolved.get(k), new[k]] for k in ("spacing", "patch_size", "median_image_size_in_voxels",
                                                       "batch_size")}
    if requested is not None:
        changes["requested_patch_size"] = requested
    off_grid = [p for p in new["patch_size"] if p % SWINUNETR_PATCH_MULTIPLE]
    if off_grid:
        log(f"{configuration}: patch size {new['patch_size']} is not a multiple of {SWINUNETR_PATCH_MULTIPLE} on "
            f"every axis; our SwinUNETR/MiMUNETR trainers round it when they start")
    plans["configurations"][configuration].update(copy.deepcopy(new))
    return changes


def normalization_schemes(plans: Dict, configuration: str) -> List[str]:
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    return list(PlansManager(plans).get_configuration(configuration).normalization_schemes)


def ct_channels(plans: Dict, configuration: str) -> List[int]:
    """Channels that ``configuration`` normalises with ``CTNormalization``."""
    return [c for c, scheme in enumerate(normalization_schemes(plans, configuration)) if scheme == CT_SCHEME]


def training_orientations(dataset_json_file: Path) -> Dict[str, int]:
    """How many of the dataset's training images (first channel, ``$nnUNet_raw/<dataset>/imagesTr``) have
    each orientation code, from the headers only; ``{}`` when the raw images are not there (a variant needs
    only the preprocessed folder) or not readable (nnU-Net's own planning names those)."""
    raw = os.environ.get("nnUNet_raw")
    if not raw:
        return {}
    ending = json.loads(dataset_json_file.read_text(encoding="utf-8")).get("file_ending", ".nii.gz")
    counts: Dict[str, int] = {}
    for path in sorted((Path(raw) / dataset_json_file.parent.name / "imagesTr").glob(f"*_0000{ending}")):
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        try:
            reader.ReadImageInformation()
        except RuntimeError:
            continue
        code = orientation_code(reader)
        counts[code] = counts.get(code, 0) + 1
    return dict(sorted(counts.items()))


def orientation_warning(counts: Mapping[str, int]) -> Optional[str]:
    """One line when training images are not oriented as MiM's pre-training store (else ``None``): nnU-Net
    trains on the arrays as stored, so the pre-trained encoder would see those cases flipped or transposed
    (nnU-Net's mirror augmentation hides flips, at the cost of left/right cues; the demo's budget has none)."""
    other = {code: n for code, n in counts.items() if code != STORE_ORIENTATION}
    if not other:
        return None
    listed = ", ".join(f"{code}: {n}" for code, n in other.items())
    return (f"WARNING: {sum(other.values())} of {sum(counts.values())} training images are not {STORE_ORIENTATION} "
            f"({listed}); MiM pre-trains on {STORE_ORIENTATION} arrays and nnU-Net trains on the arrays as stored, "
            f"so the pre-trained encoder sees these cases flipped or transposed. Reorient them in nnUNet_raw "
            f"(SimpleITK: DICOMOrient(image, '{STORE_ORIENTATION}'), labels alike) before planning, or keep nnU-Net's "
            f"mirror augmentation")


def write_plans_variant(dataset: str, new_plans_name: str, *, source_plans: str = "nnUNetPlans",
                        spacing: Optional[Sequence[float]] = None, patch_size: Optional[Sequence[int]] = None,
                        ct_window: Optional[Sequence[float]] = None, configurations: Sequence[str] = ("3d_fullres",),
                        gpu_memory_target_gb: Optional[float] = None, record: Optional[Mapping] = None,
                        log=print) -> Path:
    """Write ``$nnUNet_preprocessed/<dataset>/<new_plans_name>.json``; return its path.

    ``spacing`` (mm) and ``patch_size`` (voxels): ``(x, y, z)``, applied to ``configurations`` (3D ones).
    ``ct_window``: ``(lo, hi)`` HU -> ``[0, 1]`` on every CT channel. ``record``: extra facts for the variant's
    ``mim_nnunet_variant`` record (e.g. the recipe it came from).
    """
    from nnunetv2.utilities.json_export import recursive_fix_for_json_export

    from .dataset_network import preprocessed_files

    if not re.fullmatch(PLANS_NAME_PATTERN, new_plans_name or ""):
        raise PlansError(f"plans name '{new_plans_name}': use letters, digits, '_', '-' and '.'")
    if new_plans_name == source_plans:
        raise PlansError(f"plans name '{new_plans_name}' is the source plans' name; a variant never overwrites its source")
    plans_file, dataset_json_file = preprocessed_files(dataset, source_plans)
    source = json.loads(plans_file.read_text(encoding="utf-8"))
    plans = copy.deepcopy(source)
    missing = [c for c in configurations if c not in plans["configurations"]]
    if missing:
        raise PlansError(f"{plans_file}: no configuration '{missing[0]}' (has {', '.join(plans['configurations'])})")
    plans["plans_name"] = new_plans_name
    for name, configuration in plans["configurations"].items():
        if "data_identifier" in configuration:
            configuration["data_identifier"] = f"{new_plans_name}_{name}"

    changes: Dict[str, Dict] = {}
    if spacing is not None or patch_size is not None:
        planner = _planner(plans, dataset, new_plans_name, gpu_memory_target_gb)
        for name in configurations:
            changes[name] = _replan(planner, plans, name, new_plans_name, spacing, patch_size, log)

    channels: List[int] = []
    original_properties = {}
    if ct_window is not None:
        if len(ct_window) != 2:
            raise PlansError(f"intensity window {list(ct_window)}: two values (lower, upper HU) expected")
        window = window_properties(*ct_window)
        channels = ct_channels(plans, configurations[0])
        if not channels:
            schemes = normalization_schemes(plans, configurations[0])
            raise PlansError(f"{plans_file}: no CT channel in '{configurations[0]}' (normalisation {schemes}); an "
                             f"intensity window applies to CT channels only")
        properties = plans["foreground_intensity_properties_per_channel"]
        for c in channels:
            original_properties[str(c)] = copy.deepcopy(properties.get(str(c), {}))
            properties[str(c)] = {**properties.get(str(c), {}), **window}

    orientations = training_orientations(dataset_json_file)
    plans[VARIANT_KEY] = {
        "source_plans": source_plans,
        "training_orientations": orientations,
        "spacing_xyz": None if spacing is None else [float(s) for s in spacing],
        "patch_size_xyz": None if patch_size is None else [int(p) for p in patch_size],
        "ct_window": None if ct_window is None else [float(v) for v in ct_window],
        "ct_channels": channels,
        "source_intensity_properties": original_properties,
        "configurations": changes,
        **dict(record or {}),
    }
    recursive_fix_for_json_export(plans)
    out = write_json_atomic(plans_file.parent / f"{new_plans_name}.json", plans)
    for name, change in changes.items():
        log(f"{name}: spacing {change['spacing'][0]} -> {change['spacing'][1]}, patch {change['patch_size'][0]} -> "
            f"{change['patch_size'][1]}, batch {change['batch_size'][0]} -> {change['batch_size'][1]} (plans axes)")
    if channels:
        lo, hi = ct_window
        log(f"CT channel(s) {channels}: (clip(x, lo, hi) - lo) / (hi - lo) with lo = {lo:g}, hi = {hi:g} HU")
    warning = orientation_warning(orientations)
    if warning:
        log(warning)
    return out


# nnU-Net splits a dataset without splits_final.json into 5 folds (KFold), which needs 5 training cases
NNUNET_FOLDS = 5


def suggested_fold(preprocessed: Path, dataset_json: Mapping) -> Tuple[str, str]:
    """(fold, why): fold ``0`` where the dataset has one (its ``splits_final.json``, else at least
    :data:`NNUNET_FOLDS` training cases for nnU-Net's own split), else ``all`` (train on every case)."""
    splits = Path(preprocessed) / "splits_final.json"
    if splits.is_file():
        try:
            folds = len(json.loads(splits.read_text(encoding="utf-8")))
        except (OSError, json.JSONDecodeError, TypeError):
            folds = 0
        if folds:
            return "0", f"{splits.name} has {folds} fold(s)"
    n = int(dataset_json.get("numTraining", 0))
    if n >= NNUNET_FOLDS:
        return "0", f"nnU-Net's {NNUNET_FOLDS}-fold split of {n} training cases"
    return "all", (f"{n} training case(s): nnU-Net's {NNUNET_FOLDS}-fold split needs at least {NNUNET_FOLDS}; "
                   f"fold 'all' trains on every case")


def next_commands(dataset: str, plans_name: str, configurations: Sequence[str] = ("3d_fullres",)) -> str:
    """The stock commands that use a variant, with a fold the dataset can have and a trainer that matches the
    exports found (each explained on a comment line)."""
    from ..weights.finding import suggested_trainer
    from .dataset_network import preprocessed_files
    plans_file, dataset_json_file = preprocessed_files(dataset, plans_name)
    plans = json.loads(plans_file.read_text(encoding="utf-8"))
    fold, fold_why = suggested_fold(plans_file.parent, json.loads(dataset_json_file.read_text(encoding="utf-8")))
    results = os.environ.get("nnUNet_results")
    trainer, trainer_why = suggested_trainer(plans, Path(results) if results else None)
    return (f"nnUNetv2_preprocess -d {dataset} -plans_name {plans_name} -c {' '.join(configurations)}\n"
            f"nnUNetv2_train {dataset} {configurations[0]} {fold} -tr {trainer} -p {plans_name}\n"
            f"# fold {fold}: {fold_why}; {trainer}: {trainer_why}")
