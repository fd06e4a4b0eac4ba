"""Fine-tuning from MiM weights inside the stock nnU-Net loop: the logic of ``nnUNetTrainerMiM`` and
``nnUNetTrainerMiMSwinUNETR`` (the classes in ``trainers/`` set attributes only).

At the start of a fresh run (not ``--c``, whose checkpoint holds the weights, and not when
``-pretrained_weights`` already loaded a full network) the trainer finds the export
(:mod:`mim_nnunet.pretrained_weights`), transfers it with the pre-flight check of
:mod:`mim_nnunet.transfer`, prints the table and writes it to ``mim_transfer.json`` in the fold's folder.
Prediction builds the network from ``plans.json`` alone and never opens the export.
"""

from __future__ import annotations

import os
from typing import Optional

import torch
from torch import nn

from .atomic import write_json_atomic
from .defaults import SWIN_SIZES
from .export import load_export
from .finetune_trainer import FineTuneTrainerBase
from .pretrained_weights import find_weights
from .transfer import PREFIX, STEM, transfer

TRANSFER_REPORT = "mim_transfer.json"


def unwrap(network: nn.Module) -> nn.Module:
    """The plain module inside DDP and torch.compile wrappers."""
    network = getattr(network, "module", network)
    return getattr(network, "_orig_mod", network)


def size_of(backbone: str, arch_kwargs) -> str:
    """The pre-training size a fine-tuning network's encoder corresponds to."""
    if backbone == "hybrid":
        return arch_kwargs["size"]
    for size, sizes in SWIN_SIZES.items():
        if sizes["feature_size"] == arch_kwargs["feature_size"]:
            return size
    raise ValueError(f"no swin pre-training size has feature_size {arch_kwargs['feature_size']}")


class MiMFineTuneTrainerBase(FineTuneTrainerBase):
    """A :class:`FineTuneTrainerBase` whose encoder starts from a MiM export (``pretrained = True``)."""

    backbone: str = "hybrid"
    pretrained: bool = True

    def initialize(self):
        super().initialize()
        # nnU-Net's -pretrained_weights loads after initialize(): remember the stem to notice it
        self._stem_at_init = self._stem().detach().clone()

    def _stem(self) -> torch.Tensor:
        return unwrap(self.network).state_dict()[PREFIX[self.backbone] + STEM[self.backbone]]

    def on_train_start(self):
        super().on_train_start()
        if not self.pretrained or self.current_epoch > 0:
            return
        if not torch.equal(self._stem(), self._stem_at_init.to(self._stem().device)):
            self.print_to_log_file("MiM: weights were loaded with -pretrained_weights; not searching for an export")
            return
        self.load_pretrained_encoder()

    def load_pretrained_encoder(self, path: Optional[str] = None):
        """Find (unless given), check and load the export; the transfer table goes to the log."""
        kwargs = self.configuration_manager.network_arch_init_kwargs
        if path is None:
            path, how = find_weights(self.plans_manager.plans, self.backbone, size_of(self.backbone, kwargs),
                                     type(self).__name__)
        else:
            how = "given"
        self.print_to_log_file(f"MiM: pre-trained encoder {path} (found through {how})")
        state, record = load_export(path)
        report = transfer(unwrap(self.network), {k: v.to(self.device) for k, v in state.items()}, record, str(path),
                          spacing=self.configuration_manager.spacing,
                          normalization=self.configuration_manager.normalization_schemes)
        for line in report.table().splitlines():
            self.print_to_log_file(line)
        if self.local_rank == 0:
            write_json_atomic(os.path.join(self.output_folder, TRANSFER_REPORT), {"how": how, **report.to_dict()})
        return report
