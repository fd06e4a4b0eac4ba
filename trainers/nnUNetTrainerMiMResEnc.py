"""nnU-Net's own ResidualEncoderUNet, trained by stock nnU-Net, with the encoder from a resenc MiM export
(``mim_pretrain -backbone resenc -size M|L``); plans from ``nnUNetv2_plan_and_preprocess -pl
nnUNetPlannerResEncM|L``, trained with ``-p nnUNetResEncUNetMPlans|LPlans``. The scratch twin is stock
``nnUNetTrainer`` with the same plans. Encoder schedules: ``_warmup``, ``_frozen``, ``_encoderlr1en1``
(``mim_nnunet.finetune.schedules``). Logic: ``mim_nnunet.finetune.resenc_trainer``.
"""

from mim_nnunet.finetune.resenc_trainer import MiMResEncTrainerBase
from mim_nnunet.finetune.variants import CPUVariant


class nnUNetTrainerMiMResEnc(MiMResEncTrainerBase):
    """ResEnc from the resenc export whose size matches the plans (M or L; other plans: L)."""


class nnUNetTrainerMiMResEnc_warmup(nnUNetTrainerMiMResEnc):
    """ResEnc; encoder frozen for the first 5 % of the epochs, then its lr ramped up over 5 %."""

    schedule = "warmup"


class nnUNetTrainerMiMResEnc_frozen(nnUNetTrainerMiMResEnc):
    """ResEnc; encoder never trained, only the rest: a linear-probe-style check of the weights."""

    schedule = "frozen"


class nnUNetTrainerMiMResEnc_encoderlr1en1(nnUNetTrainerMiMResEnc):
    """ResEnc; encoder at 0.1 x the lr of the rest throughout."""

    schedule = "encoderlr1en1"


class nnUNetTrainerMiMResEnc_tiny_1epoch(CPUVariant, nnUNetTrainerMiMResEnc):
    """Smoke tests: from a resenc 'tiny' export, 1 epoch of 2 + 1 iterations, CPU-sized patch."""

    size = "tiny"
    budget = "1epoch"
