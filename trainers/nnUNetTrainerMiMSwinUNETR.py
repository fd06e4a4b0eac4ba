"""MONAI SwinUNETR whose Swin-ViT starts from a swin MiM export (its scratch twin is
``nnUNetTrainerSwinUNETR``, same network and recipe). Logic: ``mim_nnunet.mim_trainer``."""

from mim_nnunet.defaults import SWINUNETR_ARCH_KWARGS, SWINUNETR_PATCH_MULTIPLE, TINY_MAX_PATCH_SIZE
from mim_nnunet.mim_trainer import MiMFineTuneTrainerBase
from mim_nnunet.networks import SWINUNETR_CLASS_NAME


class nnUNetTrainerMiMSwinUNETR(MiMFineTuneTrainerBase):
    """SwinUNETR (feature_size 48) from a swin 'base' export."""

    network_class_name = SWINUNETR_CLASS_NAME
    arch_kwargs = SWINUNETR_ARCH_KWARGS
    patch_multiple = SWINUNETR_PATCH_MULTIPLE
    encoder_prefix = "swinViT."
    backbone = "swin"


class nnUNetTrainerMiMSwinUNETR_tiny_1epoch(nnUNetTrainerMiMSwinUNETR):
    """Smoke-test size: feature_size 12 (swin 'tiny' export), patch capped and no test-time mirroring for CPUs, 1 epoch of 2 + 1
    iterations."""

    arch_kwargs = {**SWINUNETR_ARCH_KWARGS, "feature_size": 12}
    max_patch_size = TINY_MAX_PATCH_SIZE
    inference_mirroring = False
    epochs = 1
    iterations_per_epoch = 2
    val_iterations_per_epoch = 1
