"""Fine-tuning through stock nnU-Net: plans variants (target spacing, patch size, CT intensity window) that
``nnUNetv2_preprocess -plans_name`` and ``nnUNetv2_train -p`` use as they are."""
