"""MiMUNETR (the hybrid encoder as the MiM release fine-tunes it) in the stock nnU-Net loop.

``nnUNetTrainerMiM`` starts from a hybrid MiM export (found as ``mim_nnunet.pretrained_weights``
describes); ``nnUNetTrainerMiMScratch`` is the same network from random weights, the fair baseline.
Logic: ``mim_nnunet.mim_trainer``.
"""

from mim_nnunet.defaults import MIMUNETR_ARCH_KWARGS, TINY_MAX_PATCH_SIZE
from mim_nnunet.mim_trainer import MiMFineTuneTrainerBase
from mim_nnunet.networks import MIMUNETR_CLASS_NAME

TINY = {**MIMUNETR_ARCH_KWARGS, "size": "tiny", "feature_size": 12}


class nnUNetTrainerMiM(MiMFineTuneTrainerBase):
    """MiMUNETR base from a hybrid 'base' export; patch size rounded to multiples of 32."""

    network_class_name = MIMUNETR_CLASS_NAME
    arch_kwargs = MIMUNETR_ARCH_KWARGS
    patch_multiple = 32
    patch_size_kwarg = "img_size"
    encoder_prefix = "backbone."
    backbone = "hybrid"


class nnUNetTrainerMiM_tiny_1epoch(nnUNetTrainerMiM):
    """Smoke-test size: hybrid 'tiny', decoder feature_size 12, patch capped and no test-time mirroring for CPUs, 1 epoch of 2 + 1
    iterations."""

    arch_kwargs = TINY
    max_patch_size = TINY_MAX_PATCH_SIZE
    inference_mirroring = False
    epochs = 1
    iterations_per_epoch = 2
    val_iterations_per_epoch = 1


class nnUNetTrainerMiM_tiny_10epochs(nnUNetTrainerMiM):
    """Hybrid 'tiny', patch capped and no test-time mirroring for CPUs, 10 epochs of 10 + 2 iterations."""

    arch_kwargs = TINY
    max_patch_size = TINY_MAX_PATCH_SIZE
    inference_mirroring = False
    epochs = 10
    iterations_per_epoch = 10
    val_iterations_per_epoch = 2


class nnUNetTrainerMiM_tiny_100epochs(nnUNetTrainerMiM):
    """The demo's long setting: hybrid 'tiny', patch capped and no test-time mirroring for CPUs, 100 epochs of 25 + 5 iterations."""

    arch_kwargs = TINY
    max_patch_size = TINY_MAX_PATCH_SIZE
    inference_mirroring = False
    epochs = 100
    iterations_per_epoch = 25
    val_iterations_per_epoch = 5


class nnUNetTrainerMiM_tiny_demo(nnUNetTrainerMiM):
    """The demo's default setting: hybrid 'tiny', patch capped and no test-time mirroring for CPUs, 5 epochs of 10 + 2 iterations."""

    arch_kwargs = TINY
    max_patch_size = TINY_MAX_PATCH_SIZE
    inference_mirroring = False
    epochs = 5
    iterations_per_epoch = 10
    val_iterations_per_epoch = 2


class nnUNetTrainerMiMScratch(nnUNetTrainerMiM):
    """MiMUNETR base from random weights (baseline for nnUNetTrainerMiM)."""

    pretrained = False


class nnUNetTrainerMiMScratch_tiny_1epoch(nnUNetTrainerMiM_tiny_1epoch):
    """Scratch twin of nnUNetTrainerMiM_tiny_1epoch."""

    pretrained = False


class nnUNetTrainerMiMScratch_tiny_10epochs(nnUNetTrainerMiM_tiny_10epochs):
    """Scratch twin of nnUNetTrainerMiM_tiny_10epochs."""

    pretrained = False


class nnUNetTrainerMiMScratch_tiny_100epochs(nnUNetTrainerMiM_tiny_100epochs):
    """Scratch twin of nnUNetTrainerMiM_tiny_100epochs."""

    pretrained = False


class nnUNetTrainerMiMScratch_tiny_demo(nnUNetTrainerMiM_tiny_demo):
    """Scratch twin of nnUNetTrainerMiM_tiny_demo."""

    pretrained = False
