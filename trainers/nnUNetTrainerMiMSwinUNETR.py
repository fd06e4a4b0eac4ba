"""MONAI SwinUNETR whose Swin-ViT starts from a swin MiM export (its scratch twin is
``nnUNetTrainerSwinUNETR``, same network and recipe). Encoder schedules: ``_warmup``, ``_frozen``,
``_encoderlr1en1`` (``mim_nnunet.finetune.schedules``). Logic: ``mim_nnunet.finetune.trainer``."""

from mim_nnunet.finetune.trainer import MiMFineTuneTrainerBase
from mim_nnunet.finetune.variants import CPUVariant
from mim_nnunet.networks import (
    SWINUNETR_ARCH_KWARGS,
    SWINUNETR_CLASS_NAME,
    SWINUNETR_PATCH_MULTIPLE,
)


class nnUNetTrainerMiMSwinUNETR(MiMFineTuneTrainerBase):
    """SwinUNETR (feature_size 48) from a swin 'base' export."""

    network_class_name = SWINUNETR_CLASS_NAME
    arch_kwargs = SWINUNETR_ARCH_KWARGS
    patch_multiple = SWINUNETR_PATCH_MULTIPLE
    backbone = "swin"


class nnUNetTrainerMiMSwinUNETR_warmup(nnUNetTrainerMiMSwinUNETR):
    """SwinUNETR; encoder frozen for the first 5 % of the epochs, then its lr ramped up over 5 %."""

    schedule = "warmup"


class nnUNetTrainerMiMSwinUNETR_frozen(nnUNetTrainerMiMSwinUNETR):
    """SwinUNETR; encoder never trained, only the rest: a linear-probe-style check of the weights."""

    schedule = "frozen"


class nnUNetTrainerMiMSwinUNETR_encoderlr1en1(nnUNetTrainerMiMSwinUNETR):
    """SwinUNETR; encoder at 0.1 x the lr of the rest throughout."""

    schedule = "encoderlr1en1"


class nnUNetTrainerMiMSwinUNETR_tiny_1epoch(CPUVariant, nnUNetTrainerMiMSwinUNETR):
    """Smoke tests: feature_size 12 from a swin 'tiny' export, 1 epoch of 2 + 1 iterations."""

    arch_kwargs = {**SWINUNETR_ARCH_KWARGS, "feature_size": 12}
    budget = "1epoch"
