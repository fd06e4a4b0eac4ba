"""The nnU-Net side: the logic of our trainers (``trainers/`` only sets class attributes), plans
adaptation for networks that are not nnU-Net's U-Net, plans variants (spacing, patch, CT window) for the
stock commands, the network a trainer builds for a dataset, and the short CPU variants."""
