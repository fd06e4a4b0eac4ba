"""mim-nnunet: MiM ("Mask in Mask") self-supervised pre-training for 3D segmentation with nnU-Net.

The library part of the project. nnU-Net trainer classes live in the top-level ``trainers/``
folder (found by nnU-Net through ``nnUNet_extTrainer``) and import what they need from here.
"""

__version__ = "0.3.0"
