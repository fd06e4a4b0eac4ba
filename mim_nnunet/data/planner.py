"""The self-configuring pre-training plan: spacing, input size S, crop 2S, batch, accumulation,
learning rate and intensity scheme from a fingerprint and a GPU memory target. Deterministic; every
value comes with the reason it has in ``plan["explain"]``."""

from __future__ import annotations

import math
from typing import Dict, List, Sequence

import numpy as np

from ..backbones import backbone_sizes
from ..defaults import (ANISOTROPY_THRESHOLD, BASE_LR_PER_256, CT_WINDOW, DEFAULT_INPUT_SIZE, DEVICE_COUNT_MULTIPLE,
                        EFFECTIVE_BATCH_SUBVOLUMES, GPU_MEMORY_RESERVE_GB, INPUT_MULTIPLE, MEMORY_PER_CROP_GB_AT_96,
                        MIM_SWITCHES, STORE_DTYPE)
from ..errors import MimError

DEVICE_COUNTS = (1, 2, 4, 8)


def target_spacing(median: Sequence[float], p10: Sequence[float], median_shape: Sequence[float]):
    """nnU-Net's rule: the median spacing, except that a clearly anisotropic axis (spacing ratio > 3
    and few voxels along it) takes the 10th percentile of its spacings (but stays coarser than the other
    axes), so thick-slice scans are not upsampled to the thin-slice scans' resolution."""
    median = np.asarray(median, float)
    worst = int(np.argmax(median))
    others = [i for i in range(3) if i != worst]
    aniso_spacing = median[worst] / median.min() > ANISOTROPY_THRESHOLD
    aniso_voxels = median_shape[worst] * ANISOTROPY_THRESHOLD < min(median_shape[i] for i in others)
    spacing = median.copy()
    if aniso_spacing and aniso_voxels:
        value = float(p10[worst])
        if value < max(median[others]):
            value = max(max(median[others]), value) + 1e-5
        spacing[worst] = value
        why = (f"median spacing {median.round(4).tolist()} is anisotropic (axis {worst} is "
               f"{median[worst] / median.min():.1f}x the finest > {ANISOTROPY_THRESHOLD}, and has "
               f"{median_shape[worst]:.0f} voxels vs {min(median_shape[i] for i in others):.0f}): axis {worst} "
               f"takes the 10th percentile of its spacings ({float(p10[worst]):.4g}), kept coarser than the others")
    else:
        why = f"median spacing of the collection (axes z, y, x), not anisotropic beyond {ANISOTROPY_THRESHOLD}x"
    return spacing.tolist(), why


def input_size_for(spacing: Sequence[float], base: int = DEFAULT_INPUT_SIZE) -> List[int]:
    """S per axis: ``base`` voxels along the finest axis, the same physical extent along the others,
    each rounded to the nearest multiple of 32 (ties up, at least 32)."""
    finest = min(spacing)
    return [max(INPUT_MULTIPLE, int(math.floor(base * finest / s / INPUT_MULTIPLE + 0.5)) * INPUT_MULTIPLE)
            for s in spacing]


def lr_for(effective_subvolumes: int) -> float:
    """Spec section 5: ``1e-4 x effective batch / 256`` (the batch counted in sub-volumes)."""
    return BASE_LR_PER_256 * effective_subvolumes / 256


def subvolumes_per_crop(levels: int, gamma2: int, gamma3: int) -> int:
    """Sub-volumes one L1 crop yields: 1 L1, gamma2 L2 and gamma2 x gamma3 L3 volumes, per active level."""
    return 1 + (gamma2 if levels >= 2 else 0) + (gamma2 * gamma3 if levels >= 3 else 0)


def _largest_divisor_at_most(n: int, cap: int) -> int:
    return max(d for d in range(1, n + 1) if n % d == 0 and d <= max(cap, 1))


def plan_pretraining(fingerprint: Dict, backbone: str = "hybrid", size: str = "base",
                     gpu_memory_target_gb: float = 24.0, name: str = "collection") -> Dict:
    overall = fingerprint.get("overall")
    if not overall:
        raise MimError(f"{name}: no usable case in the fingerprint; nothing to plan")
    explain: Dict[str, str] = {}
    spacing, explain["target_spacing"] = target_spacing(overall["median_spacing"], overall["spacing_p10"],
                                                        overall["median_shape"])
    s = input_size_for(spacing)
    explain["input_size"] = (f"{DEFAULT_INPUT_SIZE} voxels along the finest axis ({min(spacing):.4g} mm), the same "
                             f"physical extent along the others, rounded to multiples of {INPUT_MULTIPLE}: {s}")
    crop = [2 * v for v in s]
    explain["crop_size"] = "2S: the L1 crop, resized to S for the network; volumes smaller are padded at load time"

    g2, g3 = MIM_SWITCHES["gamma2"], MIM_SWITCHES["gamma3"]
    per_crop = subvolumes_per_crop(MIM_SWITCHES["levels"], g2, g3)
    crops = math.ceil(EFFECTIVE_BATCH_SUBVOLUMES / per_crop)
    crops = math.ceil(crops / DEVICE_COUNT_MULTIPLE) * DEVICE_COUNT_MULTIPLE
    explain["effective_batch_crops"] = (
        f"the paper's batch of {EFFECTIVE_BATCH_SUBVOLUMES} sub-volumes / {per_crop} sub-volumes per L1 crop "
        f"(1 + {g2} + {g2}x{g3}) = {math.ceil(EFFECTIVE_BATCH_SUBVOLUMES / per_crop)} crops, rounded up to a "
        f"multiple of {DEVICE_COUNT_MULTIPLE} so that 1, 2 and 4 devices reach the same effective batch")

    mem = MEMORY_PER_CROP_GB_AT_96[(backbone, size)] * float(np.prod(s)) / DEFAULT_INPUT_SIZE ** 3
    fit = int((gpu_memory_target_gb - GPU_MEMORY_RESERVE_GB) // mem)
    batches = {}
    for n in DEVICE_COUNTS:
        if crops % n:
            continue
        per_device = _largest_divisor_at_most(crops // n, fit)
        batches[str(n)] = {"per_device_batch": per_device, "accumulation": crops // (n * per_device)}
    explain["batch_by_device_count"] = (
        f"one crop needs about {mem:.1f} GB (bf16; {MEMORY_PER_CROP_GB_AT_96[(backbone, size)]} GB at 96^3 scaled by "
        f"voxels); {gpu_memory_target_gb:g} GB target - {GPU_MEMORY_RESERVE_GB:g} GB reserve fits {fit}; per device "
        f"count, the largest batch dividing the crops per device, and accumulation for the rest")
    if fit < 1:
        explain["batch_by_device_count"] += (" - WARNING: not even one crop fits the target: expect out-of-memory "
                                             "errors; raise -gpu_memory_target or use activation checkpointing")

    effective = crops * per_crop
    lr = lr_for(effective)
    explain["lr"] = f"{BASE_LR_PER_256:g} x effective batch {effective} sub-volumes / 256 (spec section 5)"

    modalities = overall["modalities"]
    intensity = {}
    if "CT" in modalities:
        intensity["CT"] = {"scheme": "ct_window", "window": list(CT_WINDOW), "background": 0.0}
    if "MRI" in modalities:
        intensity["MRI"] = {"scheme": "zscore", "background": "the normalised value of 0 per case"}
    explain["intensity"] = (f"CT: clip to {list(CT_WINDOW)} HU and scale to [0, 1] (air = 0 is the padding value); "
                            f"MRI: z-score per case and channel")
    channels = sorted({c["channels"] for c in fingerprint["cases"]})
    if len(channels) != 1:
        raise MimError(f"{name}: cases have different channel counts {channels}; pre-train them separately")
    explain["in_channels"] = "channels per case in the fingerprint (all cases agree)"
    explain["subvolumes_per_crop"] = f"1 L1 + gamma2 ({g2}) L2 + gamma2 x gamma3 ({g2 * g3}) L3 volumes (spec section 1)"
    explain["orientation"] = "every case is reoriented to RAS so that array axes mean the same in every volume"
    explain["store_dtype"] = f"{STORE_DTYPE}: [0, 1] CT in steps of 1/2048 (about 1 HU); halves the store's size"
    explain["backbone_sizes"] = f"the '{size}' size of the {backbone} backbone (mim_nnunet/defaults.py)"
    explain["mim"] = "MiM switches at their spec defaults (MIM_SPEC.md); pre-training flags override them"
    return {
        "name": name, "manifest_hash": fingerprint["manifest_hash"], "backbone": backbone, "size": size,
        "num_cases": overall["num_cases"], "modalities": modalities, "in_channels": channels[0],
        "target_spacing": spacing, "input_size": s, "crop_size": crop, "subvolumes_per_crop": per_crop,
        "effective_batch_crops": crops, "effective_batch_subvolumes": effective,
        "batch_by_device_count": batches, "lr": lr, "gpu_memory_target_gb": gpu_memory_target_gb,
        "intensity": intensity, "store_dtype": STORE_DTYPE, "orientation": "RAS",
        "backbone_sizes": backbone_sizes(backbone, size), "mim": dict(MIM_SWITCHES), "explain": explain,
    }
