"""MONAI SwinUNETR trained from scratch by the stock nnU-Net loop.

Found by nnU-Net through ``nnUNet_extTrainer`` (``mim_nnunet trainers-path`` prints this folder).
Every trainer class is defined once, here; the logic lives in ``mim_nnunet.finetune.trainer``.
"""

from mim_nnunet.finetune.trainer import FineTuneTrainerBase
from mim_nnunet.networks import (
    SWINUNETR_ARCH_KWARGS,
    SWINUNETR_CLASS_NAME,
    SWINUNETR_PATCH_MULTIPLE,
)

FS12 = {**SWINUNETR_ARCH_KWARGS, "feature_size": 12}


class nnUNetTrainerSwinUNETR(FineTuneTrainerBase):
    """SwinUNETR (feature_size 48), patch size rounded to multiples of 32, AdamW + warm-up + cosine."""

    network_class_name = SWINUNETR_CLASS_NAME
    arch_kwargs = SWINUNETR_ARCH_KWARGS
    patch_multiple = SWINUNETR_PATCH_MULTIPLE


class nnUNetTrainerSwinUNETR_fs12_1epoch(nnUNetTrainerSwinUNETR):
    """Smoke-test size: feature_size 12, 1 epoch of 2 training and 1 validation iterations."""

    arch_kwargs = FS12
    budget = "1epoch"
