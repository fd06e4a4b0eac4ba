"""Every default of the project in one place.

Sizes that depend on data come from plans (nnU-Net's plans for fine-tuning, our pre-training plan
for pre-training); what is here are the method's fixed choices and the recipes' starting values.
"""

# SwinUNETR's five stride-2 stages need every axis of its input to be a multiple of 2**5.
SWINUNETR_PATCH_MULTIPLE = 32

# MONAI SwinUNETR as the MiM paper fine-tunes it (feature_size 48 is the paper's "Swin-B" setting).
SWINUNETR_ARCH_KWARGS = {
    "feature_size": 48,
    "depths": [2, 2, 2, 2],
    "num_heads": [3, 6, 12, 24],
    "window_size": 7,
    "norm_name": "instance",
    "drop_rate": 0.0,
    "attn_drop_rate": 0.0,
    "dropout_path_rate": 0.0,
    "use_checkpoint": False,
    "use_v2": False,
}

# Fine-tuning recipe of the MiM release (inherited from the SwinUNETR BTCV scripts): AdamW,
# lr 1e-4, weight decay 1e-5, linear warm-up for 50 of 1000 epochs, then cosine decay.
FINETUNE_RECIPE = {
    "lr": 1e-4,
    "weight_decay": 1e-5,
    "betas": (0.9, 0.999),
    "warmup_fraction": 0.05,
}

# Parameter names that never get weight decay, besides every 1-D tensor (norm weights, biases).
NO_WEIGHT_DECAY_NAME_PARTS = ("pos_embed", "position", "mask_token", "relative_position_bias_table")

# nnU-Net's environment variables and what each must point at (used for one-line errors).
NNUNET_ENV_VARS = {
    "nnUNet_raw": "the folder that holds nnU-Net raw datasets (DatasetXXX_Name/imagesTr, labelsTr, dataset.json)",
    "nnUNet_preprocessed": "the folder where nnU-Net writes preprocessed data and plans",
    "nnUNet_results": "the folder where nnU-Net writes trained models",
}
EXT_TRAINER_ENV_VAR = "nnUNet_extTrainer"
