"""MiMUNETR (the hybrid encoder as the MiM release fine-tunes it) in the stock nnU-Net loop.

``nnUNetTrainerMiM`` starts from a hybrid MiM export (found as ``mim_nnunet.weights.finding``
describes); ``nnUNetTrainerMiMScratch`` is the same network from random weights, the fair baseline.
Short variants: ``_tiny_<budget>`` (hybrid 'tiny', decoder feature_size 12, CPU-sized; budgets in
``mim_nnunet.finetune.variants``). Encoder schedules: ``_warmup``, ``_frozen``, ``_encoderlr1en1``
(``mim_nnunet.finetune.schedules``). Logic: ``mim_nnunet.finetune.trainer``.
"""

from mim_nnunet.finetune.trainer import MiMFineTuneTrainerBase
from mim_nnunet.finetune.variants import CPUVariant
from mim_nnunet.networks import (
    MIMUNETR_ARCH_KWARGS,
    MIMUNETR_CLASS_NAME,
    MIMUNETR_PATCH_MULTIPLE,
)

TINY = {**MIMUNETR_ARCH_KWARGS, "size": "tiny", "feature_size": 12}


class nnUNetTrainerMiM(MiMFineTuneTrainerBase):
    """MiMUNETR base from a hybrid 'base' export; patch size rounded to multiples of 32."""

    network_class_name = MIMUNETR_CLASS_NAME
    arch_kwargs = MIMUNETR_ARCH_KWARGS
    patch_multiple = MIMUNETR_PATCH_MULTIPLE
    patch_size_kwarg = "img_size"
    backbone = "hybrid"


class nnUNetTrainerMiM_warmup(nnUNetTrainerMiM):
    """MiMUNETR base; encoder frozen for the first 5 % of the epochs, then its lr ramped up over 5 %."""

    schedule = "warmup"


class nnUNetTrainerMiM_frozen(nnUNetTrainerMiM):
    """MiMUNETR base; encoder never trained, only the rest: a linear-probe-style check of the weights."""

    schedule = "frozen"


class nnUNetTrainerMiM_encoderlr1en1(nnUNetTrainerMiM):
    """MiMUNETR base; encoder at 0.1 x the lr of the rest throughout."""

    schedule = "encoderlr1en1"


class nnUNetTrainerMiM_1epoch(nnUNetTrainerMiM):
    """MiMUNETR base, 1 epoch of 2 + 1 iterations: the GPU check (scripts/gpu_check.py, docs/gpu-check.md)."""

    budget = "1epoch"


class nnUNetTrainerMiM_tiny_1epoch(CPUVariant, nnUNetTrainerMiM):
    """Smoke tests: MiMUNETR tiny from a hybrid 'tiny' export, 1 epoch of 2 + 1 iterations."""

    arch_kwargs = TINY
    budget = "1epoch"


class nnUNetTrainerMiM_tiny_demo(CPUVariant, nnUNetTrainerMiM):
    """The demo's default and full settings: MiMUNETR tiny, 12 epochs of 10 + 1 iterations at lr 3e-3."""

    arch_kwargs = TINY
    budget = "demo"


class nnUNetTrainerMiM_tiny_quick(CPUVariant, nnUNetTrainerMiM):
    """The demo's quick setting: the demo budget's switches at 1 epoch of 2 + 1 iterations."""

    arch_kwargs = TINY
    budget = "quick"


class nnUNetTrainerMiM_tiny_10epochs(CPUVariant, nnUNetTrainerMiM):
    """MiMUNETR tiny, 10 epochs of 10 + 2 iterations."""

    arch_kwargs = TINY
    budget = "10epochs"


class nnUNetTrainerMiM_tiny_100epochs(CPUVariant, nnUNetTrainerMiM):
    """The demo's long setting: MiMUNETR tiny, 100 epochs of 25 + 5 iterations."""

    arch_kwargs = TINY
    budget = "100epochs"


class nnUNetTrainerMiMScratch(nnUNetTrainerMiM):
    """MiMUNETR base from random weights (baseline for nnUNetTrainerMiM)."""

    pretrained = False


class nnUNetTrainerMiMScratch_1epoch(nnUNetTrainerMiM_1epoch):
    """Scratch twin of nnUNetTrainerMiM_1epoch (the GPU check)."""

    pretrained = False


class nnUNetTrainerMiMScratch_tiny_1epoch(nnUNetTrainerMiM_tiny_1epoch):
    """Scratch twin of nnUNetTrainerMiM_tiny_1epoch."""

    pretrained = False


class nnUNetTrainerMiMScratch_tiny_demo(nnUNetTrainerMiM_tiny_demo):
    """Scratch twin of nnUNetTrainerMiM_tiny_demo."""

    pretrained = False


class nnUNetTrainerMiMScratch_tiny_quick(nnUNetTrainerMiM_tiny_quick):
    """Scratch twin of nnUNetTrainerMiM_tiny_quick."""

    pretrained = False


class nnUNetTrainerMiMScratch_tiny_10epochs(nnUNetTrainerMiM_tiny_10epochs):
    """Scratch twin of nnUNetTrainerMiM_tiny_10epochs."""

    pretrained = False


class nnUNetTrainerMiMScratch_tiny_100epochs(nnUNetTrainerMiM_tiny_100epochs):
    """Scratch twin of nnUNetTrainerMiM_tiny_100epochs."""

    pretrained = False
