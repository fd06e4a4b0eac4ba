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

# ---------------------------------------------------------------------------------------------
# MiM pre-training (../shared/MIM_SPEC.md). Every "(switch)" of the spec is a field of MiMConfig,
# whose defaults are these values.
TOKEN_SIZE = 16              # voxels per token edge at the network input
INPUT_MULTIPLE = 32          # every axis of the input size S is a multiple of this

MIM_SWITCHES = {
    "levels": 3,                      # 1 = plain MAE3D, 2 = stop after L2, 3 = full MiM
    "r1": 0.5,                        # fraction of the 8 L1 units masked
    "r2": 0.6,                        # fraction of L2 tokens masked
    "r3": 0.5,                        # fraction of L3 tokens masked
    "gamma2": 4,                      # L2 volumes cut from each L1 volume
    "gamma3": 4,                      # L3 volumes cut from each L2 volume
    "next_level_from": "masked",      # or "visible" (Table 11)
    "norm_pix_loss": True,
    "align_loss": "infonce",          # or "byol" (Table 12)
    "align_pairs": (True, True),      # (L1-L2, L2-L3) terms on/off (Table 10)
    "detach_parent": True,            # stop-gradient on parent features
    "tau": 0.1,                       # InfoNCE temperature (the paper gives none)
    "align_dim": 2048,                # projection output D
    "loss_weights": (1.0, 1.0, 1.0, 0.1, 0.1),   # b1..b5 of Eq. 10 (Table 3)
    "level_weight_schedule": "concurrent",       # or coarse_to_fine / fine_to_coarse (Table 14)
}

# Table 14: reconstruction weights (L1, L2, L3) at the start and end of training.
LEVEL_WEIGHT_SCHEDULES = {
    "concurrent": ((1.0, 1.0, 1.0), (1.0, 1.0, 1.0)),
    "coarse_to_fine": ((2.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
    "fine_to_coarse": ((1.0, 0.0, 2.0), (1.0, 1.0, 1.0)),
}

# Backbone sizes. hybrid: the authors' 3D ConvMAE encoder (base = the release) and its MAE decoder.
HYBRID_SIZES = {
    "base": {"channels": (48, 96, 192, 384), "depths": (2, 2, 2, 11), "heads": 12, "mlp_ratio": 4.0,
             "conv_kernel": 5, "decoder_dim": 576, "decoder_depth": 8, "decoder_heads": 16},
    "tiny": {"channels": (12, 24, 48, 96), "depths": (2, 2, 2, 11), "heads": 3, "mlp_ratio": 4.0,
             "conv_kernel": 5, "decoder_dim": 144, "decoder_depth": 2, "decoder_heads": 4},
}
# Largest window-attention matrix (elements) the swin backbone builds at once while training; above it
# attention runs in checkpointed chunks of volumes (512 MB in fp32).
SWIN_ATTENTION_CHUNK_ELEMENTS = 2 ** 27
# swin: MONAI SwinViT as SwinUNETR builds it; the decoder is the same MAE decoder. use_checkpoint is
# SwinUNETR's per-block activation checkpointing: less memory, about a third more compute.
SWIN_SIZES = {
    "base": {"feature_size": 48, "depths": (2, 2, 2, 2), "num_heads": (3, 6, 12, 24), "window_size": 7,
             "use_checkpoint": False, "decoder_dim": 576, "decoder_depth": 8, "decoder_heads": 16},
    "tiny": {"feature_size": 12, "depths": (2, 2, 2, 2), "num_heads": (3, 6, 12, 24), "window_size": 7,
             "use_checkpoint": False, "decoder_dim": 144, "decoder_depth": 2, "decoder_heads": 4},
}
