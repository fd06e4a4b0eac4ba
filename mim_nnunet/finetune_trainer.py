"""The logic behind our nnU-Net trainers; the classes in ``trainers/`` only set class attributes.

A subclass names the network (``network_class_name`` + ``arch_kwargs``, recorded into the plans) and
the patch-size multiple it needs; this base class adapts the plans, builds the network for training
and for ``nnUNetv2_predict``, turns deep supervision off and applies the fine-tuning recipe (AdamW,
linear warm-up, cosine decay).
"""

from __future__ import annotations

import os
from typing import Mapping, Optional

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import nn

from .defaults import ENCODER_LR_SCALE_ENV, FINETUNE_RECIPE
from .networks import build_network
from .optim import build_adamw
from .plans_adaptation import adapt_configuration, require_3d
from .schedules import WarmupCosineLR, warmup_steps_for


class FineTuneTrainerBase(nnUNetTrainer):
    """nnU-Net trainer for a single-output 3D network built by :func:`mim_nnunet.networks.build_network`."""

    network_class_name: str = ""
    arch_kwargs: Mapping = {}
    patch_multiple: int = 1
    patch_size_kwarg: Optional[str] = None      # arch kwarg that receives the patch size (MiMUNETR: img_size)
    max_patch_size: Optional[tuple] = None      # per-axis cap (multiples of patch_multiple), for CPU variants
    encoder_prefix: Optional[str] = None        # parameters under it get encoder_lr_scale x lr
    # Test-time mirroring in nnU-Net's final validation (8 flips in 3D); CPU variants turn it off, as
    # their users predict with --disable_tta anyway. Mirroring as training augmentation is unchanged.
    inference_mirroring: bool = True
    recipe: Mapping = FINETUNE_RECIPE
    # Short variants set these; None keeps nnU-Net's defaults (1000 epochs x 250 + 50 iterations).
    epochs: Optional[int] = None
    iterations_per_epoch: Optional[int] = None
    val_iterations_per_epoch: Optional[int] = None

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        # Fail before nnU-Net creates output folders for a run that cannot work.
        require_3d(plans, configuration, type(self).__name__)
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.configuration_manager = adapt_configuration(
            self.plans_manager.plans, configuration, self.network_class_name, self.arch_kwargs,
            self.patch_multiple, type(self).__name__, log=self.print_to_log_file,
            patch_size_kwarg=self.patch_size_kwarg, max_patch_size=self.max_patch_size)
        self.enable_deep_supervision = False  # one output; nnU-Net then builds no DeepSupervisionWrapper
        self.initial_lr = self.recipe["lr"]
        self.weight_decay = self.recipe["weight_decay"]
        if self.epochs is not None:
            self.num_epochs = self.epochs
        if self.iterations_per_epoch is not None:
            self.num_iterations_per_epoch = self.iterations_per_epoch
        if self.val_iterations_per_epoch is not None:
            self.num_val_iterations_per_epoch = self.val_iterations_per_epoch

    @staticmethod
    def build_network_architecture(plans_manager: PlansManager,
                                   configuration_manager: ConfigurationManager,
                                   num_input_channels: int,
                                   num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> nn.Module:
        """Build the network recorded in the (adapted) plans; used in training and by nnUNetv2_predict."""
        return build_network(configuration_manager.network_arch_class_name,
                             configuration_manager.network_arch_init_kwargs,
                             num_input_channels, num_output_channels)

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        configured = super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        if not self.inference_mirroring:
            self.inference_allowed_mirroring_axes = None
        return configured

    def set_deep_supervision_enabled(self, enabled: bool):
        # Our networks have a single output, there is nothing to switch.
        pass

    def encoder_lr_scale(self) -> float:
        """``recipe['encoder_lr_scale']``, or ``$MIM_ENCODER_LR_SCALE`` when set."""
        return float(os.environ.get(ENCODER_LR_SCALE_ENV, self.recipe.get("encoder_lr_scale", 1.0)))

    def configure_optimizers(self):
        scale = self.encoder_lr_scale() if self.encoder_prefix else 1.0
        if scale != 1.0:
            self.print_to_log_file(f"encoder ({self.encoder_prefix}*) lr = {scale:g} x {self.initial_lr:g}")
        optimizer = build_adamw(self.network, self.initial_lr, self.weight_decay, self.recipe["betas"],
                                scaled_prefix=self.encoder_prefix, lr_scale=scale)
        warmup = warmup_steps_for(self.num_epochs, self.recipe["warmup_fraction"])
        return optimizer, WarmupCosineLR(optimizer, total_steps=self.num_epochs, warmup_steps=warmup)
