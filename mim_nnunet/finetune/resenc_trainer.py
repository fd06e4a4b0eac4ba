"""The logic of ``nnUNetTrainerMiMResEnc``: nnU-Net's own ``ResidualEncoderUNet``, trained by stock nnU-Net
(its loss, deep supervision, SGD and poly schedule), with the encoder from a resenc MiM export.

The network is the pre-trained one: at ``__init__`` the trainer takes the architecture from the export's
record and fits the dataset's ResEnc plans to it (:func:`mim_nnunet.finetune.resenc_plans.adapt_resenc_plans`,
each change logged); nnU-Net saves those plans as the model folder's ``plans.json``, so ``nnUNetv2_predict``
rebuilds the network from the model folder alone. A model folder that already holds adapted plans (``--c``,
``--val``, another fold) keeps its architecture, so checkpoints always fit. The weights are loaded at the
start of a fresh run, before nnU-Net's augmentation workers, with the transfer check and table of the other
MiM trainers. The scratch twin is stock ``nnUNetTrainer`` with the same ``-p`` plans.
"""

from __future__ import annotations

import copy
import json
import os
from typing import Optional, Tuple

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from ..backbones.resenc import RESENC_PLANNERS
from ..common.errors import MimError
from ..weights.export import load_export
from ..weights.finding import dataset_modality, find_weights
from .plans import RECORD_KEY, require_3d
from .resenc_plans import adapt_resenc_plans
from .schedules import EncoderSchedule
from .trainer import PretrainedEncoder, RunGuards

# the export size a plans identifier pairs with (nnUNetResEncUNetMPlans -> M, ...); others: this default
PLANS_SIZE = {f"nnUNetResEncUNet{size}Plans": size for size in RESENC_PLANNERS}
DEFAULT_SIZE = "L"


class MiMResEncTrainerBase(EncoderSchedule, PretrainedEncoder, RunGuards, nnUNetTrainer):
    """Stock nnU-Net training of ``ResidualEncoderUNet`` whose encoder starts from a resenc export; a variant's
    ``schedule`` (:mod:`mim_nnunet.finetune.schedules`) splits nnU-Net's SGD into encoder and other groups and
    scales the encoder's poly lr."""

    backbone = "resenc"
    size: Optional[str] = None                  # export size to look for; None: from the plans identifier
    max_patch_size: Optional[tuple] = None      # per-axis cap, for CPU variants

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        require_3d(plans, configuration, type(self).__name__)
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.seed_run()
        self.apply_budget()
        architecture, source = self.pretrained_architecture(configuration)
        self.print_to_log_file(f"MiM: network architecture from {source}")
        adapted = copy.deepcopy(self.plans_manager.plans)
        self.configuration_manager, _ = adapt_resenc_plans(adapted, configuration, architecture,
                                                           type(self).__name__, log=self.print_to_log_file,
                                                           max_patch_size=self.max_patch_size)
        self.plans_manager = PlansManager(adapted)

    def export_size(self) -> str:
        return self.size or PLANS_SIZE.get(self.plans_manager.plans_name, DEFAULT_SIZE)

    def find_export(self) -> Tuple[str, str]:
        if getattr(self, "_export", None) is None:
            self._export = find_weights(self.plans_manager.plans, self.backbone, self.export_size(),
                                        type(self).__name__, modality=dataset_modality(self.dataset_json))
        return self._export

    def pretrained_architecture(self, configuration: str) -> Tuple[dict, str]:
        """(plans-format architecture, where it came from): the model folder's adapted plans when they exist
        (their checkpoints fit only that network), else the export's record."""
        saved = os.path.join(self.output_folder_base, "plans.json") if self.output_folder_base else None
        if saved and os.path.isfile(saved):
            with open(saved, encoding="utf-8") as fh:
                config = json.load(fh)["configurations"].get(configuration, {})
            if config.get(RECORD_KEY, {}).get("trainer") == type(self).__name__:
                return config["architecture"], f"the model folder's {saved}"
        if not self.pretrained:
            raise MimError(f"{type(self).__name__}: no pre-trained architecture to build")
        try:
            path, how = self.find_export()
            _, record = load_export(path)
        except MimError as exc:
            self.stop(str(exc))
        if "architecture" not in record:
            self.stop(f"{path}: a {record.get('backbone')!r} export without the resenc 'architecture' record; "
                      f"{type(self).__name__} needs an export of mim_pretrain -backbone resenc")
        return record["architecture"], f"the export {path} (found through {how})"
