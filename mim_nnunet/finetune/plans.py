"""Rewrite one configuration of nnU-Net plans for a network that is not nnU-Net's U-Net.

The trainer adapts a copy of the plans it was given; nnU-Net then saves that copy next to the model
(``plans.json``), so ``nnUNetv2_predict`` builds the same network with the same patch size.
"""

from __future__ import annotations

import copy
from typing import Callable, List, Mapping, Optional, Sequence, Tuple

from nnunetv2.utilities.plans_handling.plans_handler import (
    ConfigurationManager,
    PlansManager,
)

from ..common.errors import PlansError

RECORD_KEY = "mim_nnunet"


def round_patch_size(patch_size: Sequence[int], multiple: int) -> List[int]:
    """Each axis to the nearest multiple of ``multiple`` (ties round up), at least ``multiple``.

    If every axis would equal ``multiple`` the largest axis is doubled: a network that downsamples by
    ``multiple`` would otherwise see a single bottleneck voxel, where instance norm cannot train.
    """
    rounded = [max(multiple, int((int(s) + multiple // 2) // multiple) * multiple) for s in patch_size]
    if len(rounded) > 0 and all(r == multiple for r in rounded):
        largest = max(range(len(patch_size)), key=lambda i: patch_size[i])
        rounded[largest] = 2 * multiple
    return rounded


def require_3d(plans: dict, configuration: str, trainer_name: str) -> None:
    """One-line error when ``configuration`` of ``plans`` is not 3D (e.g. ``2d``)."""
    patch_size = PlansManager(plans).get_configuration(configuration).patch_size
    if len(patch_size) != 3:
        raise PlansError(
            f"{trainer_name} is 3D only: configuration '{configuration}' has a {len(patch_size)}D patch size "
            f"{list(patch_size)}; use 3d_fullres (or 3d_lowres/3d_cascade_fullres)"
        )


def adapt_configuration(plans: dict, configuration: str, network_class_name: str, arch_kwargs: Mapping,
                        patch_multiple: int, trainer_name: str,
                        log: Optional[Callable[[str], None]] = None,
                        patch_size_kwarg: Optional[str] = None,
                        max_patch_size: Optional[Sequence[int]] = None) -> Tuple[dict, ConfigurationManager]:
    """A copy of ``plans`` (never changed) recording our network and a patch size it accepts, and the
    adapted configuration's manager.

    Writes into the copy's ``configurations[configuration]``: ``patch_size`` (rounded with
    :func:`round_patch_size`), ``architecture`` (``network_class_name`` and ``arch_kwargs``, plus the
    patch size under ``patch_size_kwarg`` for networks whose shapes depend on it) and a ``mim_nnunet``
    record of what was changed and why.
    """
    require_3d(plans, configuration, trainer_name)
    resolved = PlansManager(plans)._internal_resolve_configuration_inheritance(configuration)
    record = resolved.get(RECORD_KEY)
    original = list(record["original_patch_size"]) if record else list(resolved["patch_size"])
    new_patch = round_patch_size(original, patch_multiple)
    if max_patch_size is not None:     # CPU-sized variants: fewer voxels per iteration
        new_patch = [min(p, int(m)) for p, m in zip(new_patch, max_patch_size)]
    arch_kwargs = dict(arch_kwargs)
    if patch_size_kwarg:
        arch_kwargs[patch_size_kwarg] = list(new_patch)
    changes = {
        "patch_size": new_patch,
        "architecture": {
            "network_class_name": network_class_name,
            "arch_kwargs": copy.deepcopy(dict(arch_kwargs)),
            "_kw_requires_import": [],
        },
        RECORD_KEY: {
            "trainer": trainer_name,
            "original_patch_size": original,
            "patch_size_multiple": patch_multiple,
            "note": "patch size rounded to the network's multiple; architecture replaced by the trainer",
        },
    }
    adapted = copy.deepcopy(plans)
    adapted["configurations"][configuration].update(copy.deepcopy(changes))
    resolved.update(changes)
    if log is not None and new_patch != original:
        log(f"{trainer_name}: patch size {original} -> {new_patch} (multiples of {patch_multiple})")
    return adapted, ConfigurationManager(resolved)
