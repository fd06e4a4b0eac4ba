"""nnU-Net's own ResidualEncoderUNet, trained by stock nnU-Net, with the encoder from a resenc MiM export
(``mim_pretrain -backbone resenc -size M|L``); plans from ``nnUNetv2_plan_and_preprocess -pl
nnUNetPlannerResEncM|L``, trained with ``-p nnUNetResEncUNetMPlans|LPlans``. The scratch twin is stock
``nnUNetTrainer`` with the same plans. Logic: ``mim_nnunet.finetune.resenc_trainer``.
"""

from mim_nnunet.finetune.resenc_trainer import MiMResEncTrainerBase
from mim_nnunet.finetune.variants import CPUVariant


class nnUNetTrainerMiMResEnc(MiMResEncTrainerBase):
    """ResEnc from the resenc export whose size matches the plans (M or L; other plans: L)."""


class nnUNetTrainerMiMResEnc_tiny_1epoch(CPUVariant, nnUNetTrainerMiMResEnc):
    """Smoke tests: from a resenc 'tiny' export, 1 epoch of 2 + 1 iterations, CPU-sized patch."""

    size = "tiny"
    budget = "1epoch"
