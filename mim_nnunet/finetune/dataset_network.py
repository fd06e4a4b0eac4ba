"""The network a trainer would build for an nnU-Net dataset, outside of training: for
``mim_nnunet check-transfer`` and ``expand-weights``, which must see exactly what ``nnUNetv2_train`` sees."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Dict, NamedTuple, Optional, Tuple

import torch
from torch import nn

from ..common.environment import require_nnunet_paths
from ..common.errors import MimError


class DatasetNetwork(NamedTuple):
    network: nn.Module
    trainer: type
    configuration: object          # nnU-Net ConfigurationManager (adapted by the trainer's rules)
    plans_file: Path
    plans: Dict


def preprocessed_files(dataset: str, plans_identifier: str = "nnUNetPlans") -> Tuple[Path, Path]:
    """(plans file, dataset.json) of a planned dataset; one-line errors naming what is missing."""
    from nnunetv2.utilities.dataset_name_id_conversion import (
        maybe_convert_to_dataset_name,
    )

    root = Path(require_nnunet_paths(("nnUNet_preprocessed",))["nnUNet_preprocessed"])
    try:
        name = maybe_convert_to_dataset_name(dataset)
    except RuntimeError:
        raise MimError(f"dataset {dataset}: not found in nnUNet_raw or nnUNet_preprocessed") from None
    plans_file, dataset_json_file = root / name / f"{plans_identifier}.json", root / name / "dataset.json"
    for f in (plans_file, dataset_json_file):
        if not f.is_file():
            raise MimError(f"{f}: not found; run nnUNetv2_plan_and_preprocess -d {dataset} first")
    return plans_file, dataset_json_file


def mim_trainer_class(trainer_name: str) -> type:
    """The MiM trainer class of that name (found as nnU-Net finds trainers); a one-line error otherwise."""
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    from .resenc_trainer import MiMResEncTrainerBase
    from .trainer import MiMFineTuneTrainerBase
    try:
        trainer = recursive_find_trainer_class_by_name(trainer_name)
    except Exception:
        trainer = None
    if trainer is None or not issubclass(trainer, (MiMFineTuneTrainerBase, MiMResEncTrainerBase)):
        raise MimError(f"{trainer_name}: not a MiM fine-tuning trainer found through nnUNet_extTrainer "
                       f"(e.g. nnUNetTrainerMiM, nnUNetTrainerMiMSwinUNETR, nnUNetTrainerMiMResEnc)")
    return trainer


def network_for_dataset(dataset: str, trainer_name: str, configuration: str = "3d_fullres",
                        plans_identifier: str = "nnUNetPlans", architecture: Optional[Dict] = None) -> DatasetNetwork:
    """The network ``trainer_name`` builds for the dataset's plans; a ResEnc MiM trainer builds the pre-trained
    ``architecture`` (an export record's), as it does in training."""
    from nnunetv2.utilities.label_handling.label_handling import (
        determine_num_input_channels,
    )
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from .plans import adapt_configuration
    from .resenc_plans import adapt_resenc_plans
    from .resenc_trainer import MiMResEncTrainerBase

    plans_file, dataset_json_file = preprocessed_files(dataset, plans_identifier)
    trainer = mim_trainer_class(trainer_name)
    plans = json.loads(plans_file.read_text(encoding="utf-8"))
    dataset_json = json.loads(dataset_json_file.read_text(encoding="utf-8"))
    if issubclass(trainer, MiMResEncTrainerBase):
        if architecture is None:
            raise MimError(f"{trainer_name} builds the pre-trained network: give a resenc export")
        adapted = copy.deepcopy(plans)
        config, _ = adapt_resenc_plans(adapted, configuration, architecture, trainer_name,
                                       max_patch_size=trainer.max_patch_size)
    else:
        adapted, config = adapt_configuration(plans, configuration, trainer.network_class_name, trainer.arch_kwargs,
                                              trainer.patch_multiple, trainer_name,
                                              patch_size_kwarg=trainer.patch_size_kwarg,
                                              max_patch_size=trainer.max_patch_size)
    manager = PlansManager(adapted)
    in_channels = determine_num_input_channels(manager, config, dataset_json)
    out_channels = manager.get_label_manager(dataset_json).num_segmentation_heads
    network = trainer.build_network_architecture(manager, config, in_channels, out_channels, False)
    return DatasetNetwork(network, trainer, config, plans_file, plans)


def transfer_for_dataset(dataset: str, trainer_name: str, weights: str, configuration: str = "3d_fullres",
                         plans_identifier: str = "nnUNetPlans"):
    """(DatasetNetwork, TransferReport): an export loaded into the network ``trainer_name`` builds for the
    dataset, with the pre-flight check (``mim_nnunet check-transfer``)."""
    from ..weights.export import load_export
    from ..weights.transfer import transfer

    if not mim_trainer_class(trainer_name).pretrained:
        raise MimError(f"{trainer_name} trains from random weights: there is nothing to transfer (its pre-trained "
                       f"twin loads exports; {weights} was not opened)")
    state, record = load_export(weights)
    target = network_for_dataset(dataset, trainer_name, configuration, plans_identifier,
                                 architecture=record.get("architecture"))
    report = transfer(target.network, state, record, weights, spacing=target.configuration.spacing,
                      normalization=target.configuration.normalization_schemes,
                      intensity_properties=target.plans.get("foreground_intensity_properties_per_channel"),
                      trainer=trainer_name)
    return target, report


def expanded_state(network: nn.Module) -> Dict[str, torch.Tensor]:
    """Every parameter of a network as nnU-Net's ``-pretrained_weights`` loader wants it
    (``{"network_weights": state}`` is saved by ``mim_nnunet expand-weights``)."""
    return {k: v.detach().cpu() for k, v in network.state_dict().items()}
