"""Fit a dataset's stock ResEnc plans to a pre-trained resenc encoder (for the MiM ResEnc trainer).

nnU-Net plans the network per dataset: anisotropic data get in-plane-only kernels and strides in the first
stages (``[1, 3, 3]``, ``[1, 2, 2]``), large patches a 7th stage. Pre-trained weights fit only the
pre-trained topology, so the trainer takes every encoder-defining argument from the export's record and
keeps the rest of the plans (spacing, normalisation, batch size, the decoder's convs per stage where the
stage count agrees):

- ``arch_kwargs``: ``n_stages``, ``features_per_stage``, ``kernel_sizes``, ``strides``, ``n_blocks_per_stage``
  and the op choices come from the export; ``n_conv_per_stage_decoder`` is the plans' when it has
  ``n_stages - 1`` entries, else the export's. Any other key the plans add (e.g. ``block``, ``stem_channels``)
  is dropped: the export's encoder has the defaults.
- ``patch_size``: each axis rounded to the nearest multiple of the pre-trained total stride (32), as the other
  MiM trainers round theirs (:func:`mim_nnunet.finetune.plans.round_patch_size`); the plans' patch is
  divisible by the plans' own strides only (e.g. 40 slices with 3 pools along z).
- Deep supervision follows: nnU-Net derives its scales from ``arch_kwargs['strides']``.

The adapted plans are stock nnU-Net plans (a ``ResidualEncoderUNet`` record), so ``nnUNetv2_predict`` rebuilds
the network from the model folder's ``plans.json`` alone. Adapting adapted plans changes nothing.
"""

from __future__ import annotations

import copy
import json
from typing import Callable, List, Mapping, Optional, Sequence, Tuple

from nnunetv2.utilities.plans_handling.plans_handler import (
    ConfigurationManager,
    PlansManager,
)

from ..backbones.resenc import RESENC_UNET_CLASS_NAME, cumulative_strides
from ..common.errors import PlansError
from .plans import RECORD_KEY, require_3d, round_patch_size

DECODER_KWARG = "n_conv_per_stage_decoder"


def _plain(value):
    """JSON form (tuples -> lists) so that plans read from disk and built in memory compare equal."""
    return json.loads(json.dumps(value))


def adapt_resenc_plans(plans: dict, configuration: str, architecture: Mapping, trainer_name: str,
                       log: Optional[Callable[[str], None]] = None,
                       max_patch_size: Optional[Sequence[int]] = None) -> Tuple[ConfigurationManager, List[str]]:
    """Give ``configuration`` of ``plans`` (mutated) the pre-trained ``architecture`` (an export record's,
    plans format) and a patch size it accepts (at most ``max_patch_size`` per axis, multiples of the total
    stride: the CPU variants' cap); return the new manager and one line per change."""
    require_3d(plans, configuration, trainer_name)
    if architecture.get("network_class_name") != RESENC_UNET_CLASS_NAME:
        raise PlansError(f"{trainer_name}: the pre-trained architecture is {architecture.get('network_class_name')!r}, "
                         f"not {RESENC_UNET_CLASS_NAME}")
    resolved = PlansManager(plans)._internal_resolve_configuration_inheritance(configuration)
    record = resolved.get(RECORD_KEY)
    # Re-adapting (nnUNetv2_predict, --c on the saved plans.json) starts from what the planner wrote.
    original_arch = _plain(record["original_architecture"] if record else resolved["architecture"])
    original_patch = list(record["original_patch_size"] if record else resolved["patch_size"])

    pretrained = _plain(dict(architecture["arch_kwargs"]))
    totals = cumulative_strides(pretrained["strides"])[-1]
    if len(set(totals)) != 1:
        raise PlansError(f"{trainer_name}: the pre-trained total stride {list(totals)} differs between axes; "
                         f"only isotropic pre-trained topologies are supported")
    new_kwargs = dict(pretrained)
    planned_decoder = original_arch.get("arch_kwargs", {}).get(DECODER_KWARG)
    if isinstance(planned_decoder, list) and len(planned_decoder) == pretrained["n_stages"] - 1:
        new_kwargs[DECODER_KWARG] = planned_decoder
    new_arch = {"network_class_name": RESENC_UNET_CLASS_NAME, "arch_kwargs": new_kwargs,
                "_kw_requires_import": _plain(list(architecture["_kw_requires_import"]))}
    new_patch = round_patch_size(original_patch, totals[0])
    if max_patch_size is not None:
        new_patch = [min(p, max(totals[0], int(m) // totals[0] * totals[0])) for p, m in zip(new_patch, max_patch_size)]

    changes = []
    if original_arch.get("network_class_name") != RESENC_UNET_CLASS_NAME:
        changes.append(f"network: plans {original_arch.get('network_class_name')} -> pre-trained "
                       f"{RESENC_UNET_CLASS_NAME}")
    planned = original_arch.get("arch_kwargs", {})
    for key in sorted(set(planned) | set(new_kwargs)):
        if planned.get(key, "(absent)") != new_kwargs.get(key, "(absent)"):
            changes.append(f"{key}: plans {planned.get(key, '(absent)')} -> pre-trained "
                           f"{new_kwargs.get(key, '(dropped)')}")
    if new_patch != original_patch:
        changes.append(f"patch_size: plans {original_patch} -> {new_patch} (multiples of the total stride {totals[0]})")

    update = {
        "patch_size": new_patch,
        "architecture": copy.deepcopy(new_arch),
        RECORD_KEY: {"trainer": trainer_name, "original_patch_size": original_patch,
                     "original_architecture": original_arch, "changes": changes,
                     "note": "encoder-defining arguments from the pre-trained export; patch rounded to its stride"},
    }
    plans["configurations"][configuration].update(copy.deepcopy(update))
    resolved.update(update)
    if log is not None:
        for line in changes:
            log(f"{trainer_name}: {line}")
    return ConfigurationManager(resolved), changes
