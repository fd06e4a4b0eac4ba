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

# MiMUNETR (MIM_SPEC.md section 4): hybrid backbone of the given size + SwinUNETR-style decoder;
# drop-path 0.2 as the release fine-tunes. img_size (the patch size) is added by the trainer.
MIMUNETR_ARCH_KWARGS = {
    "size": "base",
    "feature_size": 48,
    "drop_path_rate": 0.2,
    "norm_name": "instance",
}

# Patch-size cap of the 'tiny' trainer variants (tests, demos, CPUs): nnU-Net plans thin CTs with wide
# in-plane patches (e.g. 32 x 224 x 224), 11 s per iteration on 2 CPU cores; 128 in-plane is 3x cheaper.
TINY_MAX_PATCH_SIZE = (64, 128, 128)

# Fine-tuning recipe of the MiM release (inherited from the SwinUNETR BTCV scripts): AdamW,
# lr 1e-4, weight decay 1e-5, linear warm-up for 50 of 1000 epochs, then cosine decay.
FINETUNE_RECIPE = {
    "lr": 1e-4,
    "weight_decay": 1e-5,
    "betas": (0.9, 0.999),
    "warmup_fraction": 0.05,
    # lr of the pre-trained encoder relative to the rest (1.0 = one lr for all, the release's choice);
    # overridden per run by the environment variable below, since nnUNetv2_train has no flag for it.
    "encoder_lr_scale": 1.0,
}
ENCODER_LR_SCALE_ENV = "MIM_ENCODER_LR_SCALE"

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

# ---------------------------------------------------------------------------------------------
# Pre-training data and planning (issue: self-configuring plan). Explanations live in the plan JSON.
DATA_ROOT_ENV = "MIM_DATA_ROOT"
DEFAULT_INPUT_SIZE = 96                 # S per axis for isotropic data (the paper's 96^3)
ANISOTROPY_THRESHOLD = 3.0              # nnU-Net's: worst/best median spacing ratio that counts as anisotropic
EFFECTIVE_BATCH_SUBVOLUMES = 256        # the paper's batch, counted in sub-volumes
DEVICE_COUNT_MULTIPLE = 4               # effective batch in crops is a multiple of this, so 1, 2 and 4
                                        # devices reach exactly the same effective batch
BASE_LR_PER_256 = 1e-4                  # lr = 1e-4 x effective_batch / 256 (spec section 5)
DEFAULT_GPU_MEMORY_TARGET_GB = 24.0
GPU_MEMORY_RESERVE_GB = 2.0             # CUDA context, optimiser state, fragmentation
# GPU memory of one L1 crop (21 sub-volumes, forward + backward, bf16 autocast) at S = 96^3, in GB:
# estimated as half of the fp32 peaks measured on the CPU by scripts/benchmark_pretrain_step.py
# (hybrid base 21.8 GB, tiny 7.0 GB, swin tiny 12.3 GB; swin base with activation checkpointing).
MEMORY_PER_CROP_GB_AT_96 = {("hybrid", "base"): 11.0, ("hybrid", "tiny"): 3.5,
                            ("swin", "base"): 24.0, ("swin", "tiny"): 6.2}
CT_WINDOW = (-1000.0, 1000.0)           # HU clip before scaling CT to [0, 1]
STORE_DTYPE = "float16"                 # [0, 1] CT in float16: steps of 1/2048, about 1 HU

# ---------------------------------------------------------------------------------------------
# Pre-training engine (mim_pretrain). Spec section 5 gives the optimiser; the run length and warm-up
# are ours (the paper gives neither in steps): 100k optimiser steps, 5 % of them warm-up.
PRETRAIN_RECIPE = {
    "betas": (0.9, 0.95),
    "weight_decay": 0.05,
    "warmup_fraction": 0.05,
    "steps": 100_000,
    "seed": 0,
}
# How often (in optimiser steps) the engine writes each artefact.
PRETRAIN_INTERVALS = {
    "save_every": 1000,          # checkpoint_latest.pt (atomic)
    "log_every": 10,             # a line in log.txt (log.jsonl gets every step)
    "plot_every": 100,           # progress.png
    "recon_every": 1000,         # reconstructions/step_XXXXXXX.png
}
ETA_AFTER_STEPS = 3              # steps timed before an ETA is shown (the first ones include start-up)
DIST_TIMEOUT_S = 1800            # a collective that waits longer than this fails (a peer is gone)
DIST_PREPARE_TIMEOUT_S = 72 * 3600   # under torchrun, ranks > 0 wait this long for rank 0's preprocessing
DIST_BUCKET_ELEMENTS = 2 ** 24   # gradients are all-reduced in flat buckets of this many elements
# Fault injection for tests and drills: "RANK:STEP" makes that rank raise at that step.
FAULT_INJECTION_ENV = "MIM_PRETRAIN_FAIL_AT"

# ---------------------------------------------------------------------------------------------
# The real-CT demo (mim_nnunet demo): pre-training length and input size, and the fine-tuning trainers
# (MiM-initialised and its scratch twin, same budget) per setting.
DEMO_SETTINGS = {
    "quick": {"pretrain_steps": 4, "input_size": 32, "finetune": "tiny_1epoch"},        # tests, smoke runs
    "default": {"pretrain_steps": 40, "input_size": 64, "finetune": "tiny_demo"},       # < 20 min on 2 CPU cores
    "long": {"pretrain_steps": 2000, "input_size": 64, "finetune": "tiny_100epochs"},   # better numbers, hours on CPU
}
DEMO_OVERLAY_WINDOW = (-200.0, 300.0)   # HU shown in overlay pictures (soft tissue)
