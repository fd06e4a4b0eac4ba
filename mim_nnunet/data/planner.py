"""The self-configuring pre-training plan: spacing, input size S, batch, accumulation, learning rate,
intensity scheme, backbone sizes and MiM switches from a fingerprint and a GPU memory target.
Deterministic; every value comes with the reason it has in ``plan["explain"]``.

The plan is the run's configuration, as nnU-Net's plans are: every value it holds is read back
(preprocessing: spacing, orientation, intensity, store dtype; the engine: sizes, switches, batch split,
lr), so editing the plan changes the run. ``PLAN_KEYS`` lists them; ``explain`` documents them.
"""

from __future__ import annotations

import functools
import math
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..backbones import backbone_sizes
from ..common.errors import MimError
from ..mim.config import (
    ALIGN_DIM_BY_SIZE,
    MIM_SWITCHES,
    align_dim_for,
    subvolumes_per_crop,
)
from ..mim.tokens import INPUT_MULTIPLE
from .intensity import foreground_rule, intensity_scheme
from .loader import UNIFORM_CROP_FRACTION
from .preprocess import STORE_DTYPE, STORE_ORIENTATION

DEFAULT_INPUT_SIZE = 96                 # S per axis for isotropic data (the paper's 96^3)
ANISOTROPY_THRESHOLD = 3.0              # nnU-Net's: worst/best median spacing ratio that counts as anisotropic
EFFECTIVE_BATCH_SUBVOLUMES = 256        # the paper's batch, counted in sub-volumes
DEVICE_COUNTS = (1, 2, 4, 8)            # device counts the plan splits the batch for
DEVICE_COUNT_MULTIPLE = 4               # effective batch in crops is a multiple of this, so 1, 2 and 4
                                        # devices reach exactly the same effective batch
# The learning-rate rule: the paper's lr at the paper's batch (1e-4 at 256 sub-volumes, the paper's Table 3 and the authors' release),
# scaled by the square root of the batch ratio, the scaling rule for Adam-type optimisers (Malladi et al.,
# "On the SDEs and Scaling Rules for Adaptive Gradient Algorithms", NeurIPS 2022). The linear rule
# (lr proportional to the batch) is SGD's: it starves small batches (8e-6 for one 21-sub-volume crop) and overshoots large ones.
REFERENCE_LR = 1e-4
REFERENCE_BATCH_SUBVOLUMES = 256
DEFAULT_GPU_MEMORY_TARGET_GB = 24.0     # only when the GPU's free memory cannot be read
GPU_MEMORY_RESERVE_GB = 2.0             # the training process's own CUDA context and cuDNN/cuBLAS workspaces
# On a GPU the target is the free memory of the card (the least free of the run's local GPUs, read by
# torch.cuda.mem_get_info in a short-lived process, so no CUDA context of this one stays on the cards)
# less this headroom (allocator fragmentation, NCCL buffers), rounded down to a multiple of
# GPU_MEMORY_STEP_GB so that the plan stays put as free memory drifts a little between invocations.
GPU_MEMORY_HEADROOM_FRACTION = 0.10
GPU_MEMORY_STEP_GB = 2.0
# On the CPU (mim_pretrain -device cpu, or no GPU) the default target comes from the RAM available when
# planning: this fraction of it (the rest for the system, other programs and the loader workers), shared
# by the processes (the CPU trains in fp32: the memory model below is used at fp32). Rounded down to a
# power of two so that the plan, and edits made to it, stay put while free memory drifts a little.
CPU_MEMORY_FRACTION = 0.75
# The memory model of one pre-training step on one device: ``fixed_gb`` (interpreter, weights, gradients)
# plus ``per_subvolume_gb`` for each sub-volume whose activations are alive at once (all 21 of a crop in
# a one-shot step; at most the chunk with -chunk), both fp32 at S = 96^3 (the per-sub-volume part scales
# with S's voxels), plus what a step keeps per crop (KEPT_VOLUMES_PER_CROP). Each entry names its
# source: a two-point fit of peaks measured by scripts/benchmark_pretrain_step.py (two settings of the
# sub-volumes alive at once: one shot, a chunk, or the first levels alone); the CPU's RSS includes the
# interpreter and libraries, so the fits are conservative for a GPU's allocated memory.
STEP_MEMORY_FP32_AT_96 = {
    ("hybrid", "base"): {"fixed_gb": 1.86, "per_subvolume_gb": 0.942,
                         "source": "measured: CPU peak RSS, fp32, one crop, S = 96 (scripts/benchmark_pretrain_step.py "
                                   "-configs hybrid:base): one shot 21.8 GB (2026-11-28) and chunk 4 5930 MB "
                                   "(-chunks 4, 2026-11-29; 2-core CPU); per sub-volume = the difference / 17, "
                                   "fixed = the rest less the kept volumes"},
    ("hybrid", "tiny"): {"fixed_gb": 1.19, "per_subvolume_gb": 0.251,
                         "source": "measured: CPU peak RSS, fp32, one crop, S = 96 (scripts/benchmark_pretrain_step.py "
                                   "-configs hybrid:tiny -input_size 96 -chunks 1,8; 2-core CPU, 2026-11-29): chunk 1 "
                                   "1649 MB, chunk 8 3446 MB; per sub-volume = the difference / 7; fixed = the rest (CPU "
                                   "process: interpreter and libraries included). At S = 64 the one-shot step (2735 MB) "
                                   "and chunk 1 (1261 MB) give 0.243 GB per sub-volume at 96^3"},
    ("swin", "base"): {"fixed_gb": 2.63, "per_subvolume_gb": 1.178,
                       "source": "measured: CPU peak RSS, fp32, S = 96 (scripts/benchmark_pretrain_step.py "
                                 "-configs swin:base; 2-core CPU, 2026-11-29): one sub-volume (-levels 1) 4063 MB, "
                                 "four at once (-levels 2 -chunks 4) 7683 MB; per sub-volume = the difference / 3, "
                                 "fixed = the rest less the kept volumes"},
    ("swin", "tiny"): {"fixed_gb": 1.84, "per_subvolume_gb": 0.751,
                       "source": "measured: CPU peak RSS, fp32, one crop, S = 64 (scripts/benchmark_pretrain_step.py "
                                 "-configs swin:tiny -input_size 64 -chunks 0,1; 2-core CPU, 2026-11-29): one shot "
                                 "6716 MB, chunk 1 2161 MB; per sub-volume = the difference / 20, x 3.375 to 96^3; "
                                 "fixed = the rest. Conservative between the two points (chunk 4: 3518 MB, 16: 4754 MB "
                                 "measured; large batches recompute the window attention)"},
    ("resenc", "M"): {"fixed_gb": 2.52, "per_subvolume_gb": 1.284,
                      "source": "measured: CPU peak RSS, fp32, S = 96 (scripts/benchmark_pretrain_step.py -configs "
                                "resenc:M; 2-core CPU, 2026-11-29): one sub-volume (-levels 1) 4064 MB, four at once "
                                "(-levels 2 -chunks 4) 8009 MB; per sub-volume = the difference / 3, fixed = the "
                                "rest less the kept volumes"},
    ("resenc", "tiny"): {"fixed_gb": 1.25, "per_subvolume_gb": 0.318,
                         "source": "measured: CPU peak RSS, fp32, one crop, S = 96 (scripts/benchmark_pretrain_step.py "
                                   "-configs resenc:tiny -chunks 1,8; 2-core CPU, 2026-11-29): chunk 1 1772 MB, "
                                   "chunk 8 4048 MB; per sub-volume = the difference / 7, fixed = the rest less the "
                                   "kept volumes"},
}
# resenc L is resenc M here: the same encoder topology and MAE decoder (the presets differ in nnU-Net's
# fine-tuning patch size only)
STEP_MEMORY_FP32_AT_96[("resenc", "L")] = {**STEP_MEMORY_FP32_AT_96[("resenc", "M")],
                                           "source": "as resenc M, measured there (the same encoder topology and "
                                                     "MAE decoder)"}
# A step keeps, per crop, its 2S crop (8 S-volumes) and the inputs and predictions of its 21 sub-volumes.
KEPT_VOLUMES_PER_CROP = 8 + 2 * 21
FP32_BYTES = 4
# fp32 training state per parameter: weights, gradients and AdamW's two moments (4 bytes each); autocast
# does not shrink any of them. Computed from the model's parameter count.
STATE_BYTES_PER_PARAMETER = 16
# Activations under bf16/fp16 autocast, as a fraction of their fp32 size. An estimate, not yet measured on a
# GPU: convolution and matmul outputs are half precision, but the hybrid's residual stream (LayerNorm
# outputs, the masked products, the position embedding sums) and the losses stay fp32, so not 0.5.
BF16_FRACTION_OF_FP32 = 0.65
# What a plan holds; each is read back by preprocessing or the engine (``explain`` documents them).
PLAN_KEYS = ("name", "manifest_hash", "backbone", "size", "gpu_memory_target_gb", "in_channels", "target_spacing",
             "orientation", "intensity", "foreground", "store_dtype", "input_size", "uniform_crop_fraction",
             "backbone_sizes", "mim", "effective_batch_subvolumes", "batch_by_device_count", "lr", "explain")


class MemoryTarget(float):
    """A memory target in GB that carries how it was chosen (``why``), for the plan's ``explain``, and the
    device it is for; it passes through the data pipeline as the plain float it is."""

    why: str
    device: str     # the device the target is for: "cpu" plans fp32 steps, a GPU autocast steps

    def __new__(cls, gb: float, why: str, device: str = "cuda") -> "MemoryTarget":
        target = super().__new__(cls, gb)
        target.why, target.device = why, device
        return target


def available_memory_gb() -> Optional[float]:
    """RAM available now, in GB: ``MemAvailable`` of /proc/meminfo (Linux), else the free pages of
    ``os.sysconf``; None when neither can be read."""
    try:
        with open("/proc/meminfo", encoding="utf-8") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024 / 1e9
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 1e9
    except (AttributeError, ValueError, OSError):
        return None


def free_gpu_memory_gb(devices: int) -> Optional[float]:
    """The least free memory (GiB) of GPUs ``0..devices-1`` as ``torch.cuda.mem_get_info`` reads it, in a
    short-lived process (a CUDA context made here would stay on every card for the whole run); None when
    it cannot be read."""
    import concurrent.futures
    import multiprocessing

    try:
        with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            return pool.submit(_read_free_gpu_memory, devices).result(timeout=300)
    except Exception:        # no CUDA, a driver error, a process that cannot start: the default is used
        return None


def _read_free_gpu_memory(devices: int) -> Optional[float]:
    import torch

    count = torch.cuda.device_count()
    if count < 1:
        return None
    return min(torch.cuda.mem_get_info(i)[0] for i in range(min(max(devices, 1), count))) / 2 ** 30


def memory_target_for(device: str, processes: int = 1, given: Optional[float] = None) -> float:
    """The memory target per device the batch split is planned for, as a :class:`MemoryTarget` whose
    ``why`` goes into the plan's explanation: ``given`` (``-gpu_memory_target``) as is; on GPUs the free
    memory of the run's cards less ``GPU_MEMORY_HEADROOM_FRACTION``, rounded down to a multiple of
    ``GPU_MEMORY_STEP_GB`` (``DEFAULT_GPU_MEMORY_TARGET_GB`` when it cannot be read); on the CPU, sized from
    the RAM available (``CPU_MEMORY_FRACTION``, shared by ``processes``, rounded down to a power of two)."""
    if given is not None:
        return MemoryTarget(float(given), "-gpu_memory_target: the memory per device the batch split is planned for")
    if device != "cpu":
        free = free_gpu_memory_gb(processes)
        if free is None or free <= 0:
            return MemoryTarget(DEFAULT_GPU_MEMORY_TARGET_GB, f"the GPU's free memory could not be read: the "
                                                              f"default {DEFAULT_GPU_MEMORY_TARGET_GB:g} GB; set "
                                                              f"-gpu_memory_target")
        gb = math.floor(free * (1 - GPU_MEMORY_HEADROOM_FRACTION) / GPU_MEMORY_STEP_GB) * GPU_MEMORY_STEP_GB
        return MemoryTarget(gb, f"read from the card: {free:.1f} GB free (torch.cuda.mem_get_info, the least of "
                                f"{max(int(processes), 1)} local GPU(s)) less {GPU_MEMORY_HEADROOM_FRACTION:.0%} "
                                f"headroom (allocator fragmentation, NCCL buffers), rounded down to a multiple of "
                                f"{GPU_MEMORY_STEP_GB:g} GB so the plan stays put as free memory drifts")
    available = available_memory_gb()
    if available is None or available <= 0:
        return MemoryTarget(DEFAULT_GPU_MEMORY_TARGET_GB, f"CPU run, but the available RAM could not be read: the "
                                                          f"GPU default {DEFAULT_GPU_MEMORY_TARGET_GB:g} GB; set "
                                                          f"-gpu_memory_target")
    share = available * CPU_MEMORY_FRACTION / max(int(processes), 1)
    gb = 2.0 ** math.floor(math.log2(share))
    return MemoryTarget(gb, f"sized for the CPU (no -gpu_memory_target): {available:.1f} GB RAM available x "
                            f"{CPU_MEMORY_FRACTION:g} / {int(processes)} process(es) = {share:.2f} GB, rounded "
                            f"down to a power of two ({gb:g} GB) so the plan stays put as free memory drifts",
                        device="cpu")


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


def lr_for(effective_subvolumes: float) -> float:
    """The lr rule: ``1e-4 x sqrt(effective batch / 256)``, the batch counted in sub-volumes."""
    return REFERENCE_LR * math.sqrt(effective_subvolumes / REFERENCE_BATCH_SUBVOLUMES)


def rescale_lr(lr: float, from_subvolumes: float, to_subvolumes: float) -> float:
    """``lr`` (chosen for a batch of ``from_subvolumes``) for a batch of ``to_subvolumes``, by the lr rule."""
    return lr * math.sqrt(to_subvolumes / from_subvolumes)


def memory_entry(backbone: str, size: str) -> Dict:
    """The memory model's entry of a backbone and size (:data:`STEP_MEMORY_FP32_AT_96`)."""
    if (backbone, size) not in STEP_MEMORY_FP32_AT_96:
        raise MimError(f"no memory model for {backbone} '{size}' (mim_nnunet/data/planner.py STEP_MEMORY_FP32_AT_96); "
                       f"measure it with scripts/benchmark_pretrain_step.py and add it")
    return STEP_MEMORY_FP32_AT_96[(backbone, size)]


def live_subvolumes(batch: int, chunk: int, gamma2: int, gamma3: int) -> int:
    """Sub-volumes whose activations are alive at once in a step of ``batch`` crops: all of them in one
    shot (``chunk`` 0), else at most ``chunk`` of the largest level (L3: batch x gamma2 x gamma3)."""
    if not chunk:
        return batch * subvolumes_per_crop(3, gamma2, gamma3)
    return min(chunk, batch * max(1, gamma2, gamma2 * gamma3))


@functools.lru_cache(maxsize=None)
def parameter_count(backbone: str, size: str, input_size: Tuple[int, int, int], in_channels: int = 1) -> int:
    """Parameters of the MiM model (encoder, decoder, alignment heads) at the size table's entry and the
    default switches; built on the meta device where the backbone allows it (no memory, no init)."""
    import torch

    from ..mim.config import MiMConfig
    from ..mim.model import build_mim

    config = MiMConfig(input_size=tuple(input_size), in_channels=in_channels,
                       **{**MIM_SWITCHES, "align_dim": align_dim_for(size)})
    try:
        with torch.device("meta"):
            model = build_mim(backbone, size, config, backbone_sizes(backbone, size))
    except (RuntimeError, NotImplementedError):       # a backbone whose construction reads values (MONAI's swin)
        model = build_mim(backbone, size, config, backbone_sizes(backbone, size))
    return sum(p.numel() for p in model.parameters())


def step_memory_terms(backbone: str, size: str, input_size: Sequence[int], batch: int, chunk: int,
                      gamma2: int = MIM_SWITCHES["gamma2"], gamma3: int = MIM_SWITCHES["gamma3"],
                      fraction: float = BF16_FRACTION_OF_FP32) -> Dict[str, float]:
    """Modelled memory (GB) of one step on one device, term by term:

    - ``state``: fp32 weights, gradients and AdamW moments (``STATE_BYTES_PER_PARAMETER`` x parameters),
      untouched by autocast;
    - ``runtime``: the rest of the measured fixed part (interpreter and libraries in the CPU's RSS; kept on
      GPUs as a margin), at least 0;
    - ``activations``: per live sub-volume (measured fp32, scaled by S's voxels) x ``fraction`` (1 for fp32,
      ``BF16_FRACTION_OF_FP32`` under autocast);
    - ``kept``: the volumes a step keeps per crop (its 2S crop, every sub-volume's input and prediction),
      fp32, x batch."""
    entry, voxels = memory_entry(backbone, size), float(np.prod(input_size))
    size3 = tuple(int(v) for v in (list(input_size) * 3 if len(input_size) == 1 else input_size))
    state = STATE_BYTES_PER_PARAMETER * parameter_count(backbone, size, size3) / 2 ** 30
    live = live_subvolumes(batch, chunk, gamma2, gamma3)
    return {"state": state, "runtime": max(0.0, entry["fixed_gb"] - state),
            "activations": fraction * entry["per_subvolume_gb"] * voxels / DEFAULT_INPUT_SIZE ** 3 * live,
            "kept": KEPT_VOLUMES_PER_CROP * voxels * FP32_BYTES / 2 ** 30 * batch}


def step_memory_gb(backbone: str, size: str, input_size: Sequence[int], batch: int, chunk: int,
                   gamma2: int = MIM_SWITCHES["gamma2"], gamma3: int = MIM_SWITCHES["gamma3"],
                   fraction: float = BF16_FRACTION_OF_FP32) -> float:
    """Modelled memory (GB) of one step on one device: the sum of :func:`step_memory_terms`."""
    return sum(step_memory_terms(backbone, size, input_size, batch, chunk, gamma2, gamma3, fraction).values())


def split_for_memory(backbone: str, size: str, input_size: Sequence[int], crops_per_device: int,
                     available_gb: float, fraction: float = BF16_FRACTION_OF_FP32) -> Tuple[int, int]:
    """(per-device batch, chunk): the largest batch dividing ``crops_per_device`` whose one-shot step fits
    ``available_gb``; when not even one crop fits, one crop in the largest chunk that fits (at least 1)."""
    for batch in sorted((d for d in range(1, crops_per_device + 1) if crops_per_device % d == 0), reverse=True):
        if step_memory_gb(backbone, size, input_size, batch, 0, fraction=fraction) <= available_gb:
            return batch, 0
    largest = live_subvolumes(1, 10 ** 6, MIM_SWITCHES["gamma2"], MIM_SWITCHES["gamma3"])
    fitting = [c for c in range(1, largest + 1)
               if step_memory_gb(backbone, size, input_size, 1, c, fraction=fraction) <= available_gb]
    return 1, max(fitting, default=1)


def activation_fraction(device: str) -> float:
    """Activations' size relative to fp32 on ``device``: the CPU trains in fp32, GPUs under autocast."""
    return 1.0 if device == "cpu" else BF16_FRACTION_OF_FP32


def split_for_devices(backbone: str, size: str, input_size: Sequence[int], crops: int, devices: int,
                      available_gb: float, fraction: float = BF16_FRACTION_OF_FP32) -> Dict[str, int]:
    """The batch split of ``crops`` L1 crops per step over ``devices`` devices, for any device count:
    ``ceil(crops / devices)`` crops per device (the effective batch grows to the next multiple of the
    device count when it does not divide), then :func:`split_for_memory`, accumulation for the rest."""
    per_device = -(-int(crops) // int(devices))
    batch, chunk = split_for_memory(backbone, size, input_size, per_device, available_gb, fraction)
    return {"per_device_batch": batch, "accumulation": per_device // batch, "chunk": chunk}


def plan_split(plan: Dict, devices: int, device: str = "cuda") -> Dict[str, int]:
    """The plan's batch split for ``devices`` devices: its ``batch_by_device_count`` entry (as edited), or
    for a count it has no entry for, derived by the same rule from its memory target, input size and
    effective batch (:func:`split_for_devices`)."""
    entry = plan["batch_by_device_count"].get(str(devices))
    if entry is not None:
        return dict(entry)
    mim = plan["mim"]
    crops = math.ceil(plan["effective_batch_subvolumes"] /
                      subvolumes_per_crop(mim["levels"], mim["gamma2"], mim["gamma3"]))
    return split_for_devices(plan["backbone"], plan["size"], plan["input_size"], crops, devices,
                             plan["gpu_memory_target_gb"] - GPU_MEMORY_RESERVE_GB, activation_fraction(device))


def plan_pretraining(fingerprint: Dict, backbone: str = "hybrid", size: str = "base",
                     gpu_memory_target_gb: float = 24.0, name: str = "collection",
                     spacing_zyx: Optional[Sequence[float]] = None,
                     ct_window: Optional[Sequence[float]] = None) -> Dict:
    """The plan for a collection's fingerprint; ``spacing_zyx`` (mm, the store's z, y, x axes) replaces the
    planned target spacing (``-spacing``), ``ct_window`` (HU) the default CT window (``-ct_window``)."""
    overall = fingerprint.get("overall")
    if not overall:
        raise MimError(f"{name}: no usable case in the fingerprint; nothing to plan")
    explain: Dict[str, str] = {}
    if spacing_zyx is not None:
        if len(spacing_zyx) != 3 or min(spacing_zyx) <= 0:
            raise MimError(f"-spacing needs three positive values in mm, got {list(spacing_zyx)}")
        spacing = [float(v) for v in spacing_zyx]
        explain["target_spacing"] = (f"given (-spacing), axes z, y, x; the collection's median spacing is "
                                     f"{[round(v, 4) for v in overall['median_spacing']]}")
    else:
        spacing, explain["target_spacing"] = target_spacing(overall["median_spacing"], overall["spacing_p10"],
                                                            overall["median_shape"])
    s = input_size_for(spacing)
    explain["input_size"] = (f"{DEFAULT_INPUT_SIZE} voxels along the finest axis ({min(spacing):.4g} mm), the same "
                             f"physical extent along the others, rounded to multiples of {INPUT_MULTIPLE}: {s}")
    explain["input_size"] += ("; L1 crops are 2S, resized to S for the network; volumes smaller than 2S are "
                              "padded with their background at load time")

    g2, g3 = MIM_SWITCHES["gamma2"], MIM_SWITCHES["gamma3"]
    per_crop = subvolumes_per_crop(MIM_SWITCHES["levels"], g2, g3)
    crops = math.ceil(EFFECTIVE_BATCH_SUBVOLUMES / per_crop)
    crops = math.ceil(crops / DEVICE_COUNT_MULTIPLE) * DEVICE_COUNT_MULTIPLE
    effective = crops * per_crop
    explain["effective_batch_subvolumes"] = (
        f"the paper's batch of {EFFECTIVE_BATCH_SUBVOLUMES} sub-volumes / {per_crop} sub-volumes per L1 crop "
        f"(1 + gamma2 {g2} + gamma2 x gamma3 {g2 * g3}) = {math.ceil(EFFECTIVE_BATCH_SUBVOLUMES / per_crop)} crops, "
        f"rounded up to a multiple of {DEVICE_COUNT_MULTIPLE} ({crops} crops, {effective} sub-volumes) so that 1, 2 "
        f"and 4 devices reach the same effective batch; the lr below is for this batch")

    device = getattr(gpu_memory_target_gb, "device", "cuda")
    fraction = activation_fraction(device)
    available = gpu_memory_target_gb - GPU_MEMORY_RESERVE_GB
    batches = {str(n): split_for_devices(backbone, size, s, crops, n, available, fraction) for n in DEVICE_COUNTS}
    entry = memory_entry(backbone, size)
    terms = step_memory_terms(backbone, size, s, 1, 0, fraction=fraction)
    precision = "fp32 (CPU)" if device == "cpu" else f"autocast: activations x {fraction:g} of fp32"
    explain["batch_by_device_count"] = (
        f"modelled step memory per device ({precision}), term by term for one crop in one shot: fp32 state "
        f"(weights, gradients, AdamW moments: {STATE_BYTES_PER_PARAMETER} bytes x "
        f"{parameter_count(backbone, size, tuple(s)):,} parameters; computed) {terms['state']:.2f} GB + runtime "
        f"(the rest of the measured fixed {entry['fixed_gb']:g} GB) {terms['runtime']:.2f} GB + activations "
        f"({entry['per_subvolume_gb']:g} GB per live sub-volume at 96^3, measured in fp32, scaled by voxels"
        + ("" if device == "cpu" else f", x {fraction:g} under autocast: an estimate, not yet measured on a GPU")
        + f") {terms['activations']:.2f} GB + kept volumes (2S crop, inputs and predictions, fp32; computed) "
        f"{terms['kept']:.2f} GB = {sum(terms.values()):.1f} GB; measured figures from: {entry['source']}. "
        f"Against the {gpu_memory_target_gb:g} GB target - {GPU_MEMORY_RESERVE_GB:g} GB reserve (the CUDA context), "
        f"for any device count N: ceil({crops} crops / N) crops per device (N that does not divide {crops} grows "
        f"the effective batch to the next multiple of N, the lr follows by its rule), the largest per-device "
        f"batch dividing them whose one-shot step fits, accumulation for the rest; when not even one crop fits, "
        f"one crop with its sub-volumes in the largest chunk that fits (chunk 0 = one shot; mim_pretrain -chunk "
        f"overrides). Listed here for {', '.join(map(str, DEVICE_COUNTS))} devices; other counts are derived "
        f"by the same rule when the run starts")
    if step_memory_gb(backbone, size, s, 1, 1, fraction=fraction) > available:
        explain["batch_by_device_count"] += (" - WARNING: not even a chunk of one sub-volume fits the target: expect "
                                             "out-of-memory errors; raise -gpu_memory_target, or add mim_pretrain "
                                             "--checkpointing (activations recomputed, not kept: 28 % less peak "
                                             "memory for hybrid base at -chunk 4 on a CPU, docs/benchmarks.md)")

    lr = lr_for(effective)
    explain["lr"] = (f"{REFERENCE_LR:g} x sqrt(effective batch {effective} / {REFERENCE_BATCH_SUBVOLUMES} sub-volumes): the "
                     f"paper's lr at the paper's batch, scaled by the square root of the batch ratio, the scaling "
                     f"rule of Adam-type optimisers (Malladi et al., NeurIPS 2022); the linear rule is SGD's "
                     f"and gives 8e-6 to a run of one crop per step. A run whose batch differs (-batch, -accum, "
                     f"another device count, other switches) rescales this lr by the same rule. Short runs (a few "
                     f"hundred steps, e.g. the demo) learn faster at a higher lr: set it here or with -lr")

    intensity, explain["intensity"] = intensity_scheme(overall["modalities"], ct_window)
    foreground, explain["foreground"] = foreground_rule()
    explain["uniform_crop_fraction"] = (f"{UNIFORM_CROP_FRACTION:g} of the crops are placed uniformly (air, table, "
                                        f"padding included); the others are centred on a foreground voxel")
    channels = sorted({c["channels"] for c in fingerprint["cases"]})
    if len(channels) != 1:
        raise MimError(f"{name}: cases have different channel counts {channels}; pre-train them separately")
    explain["in_channels"] = "channels per case in the fingerprint (all cases agree)"
    explain["orientation"] = f"every case is reoriented to {STORE_ORIENTATION} so that array axes mean the same in every volume"
    explain["store_dtype"] = f"{STORE_DTYPE}: [0, 1] CT in steps of 1/2048 (about 1 HU); halves the store's size"
    explain["backbone_sizes"] = (f"the '{size}' entry of the {backbone} backbone's size table (mim_nnunet/backbones/"
                                 f"{backbone}.py); the run builds exactly these sizes")
    mim = {**MIM_SWITCHES, "align_dim": align_dim_for(size)}
    explain["mim"] = "MiM switches at the paper's defaults (docs/method.md); mim_pretrain flags override them per run"
    if size in ALIGN_DIM_BY_SIZE:
        explain["mim"] += (f"; align_dim {mim['align_dim']} instead of the paper's {MIM_SWITCHES['align_dim']} at the "
                           f"'{size}' size (a lean checkpoint; mim_nnunet/mim/config.py ALIGN_DIM_BY_SIZE says why)")
    explain["gpu_memory_target_gb"] = getattr(gpu_memory_target_gb, "why", None) or \
        "-gpu_memory_target: the memory per device the batch split is planned for"
    explain["collection"] = (f"{overall['num_cases']} usable cases, modalities {overall['modalities']} "
                             f"(fingerprint.json has the per-case details)")
    plan = {
        "name": name, "manifest_hash": fingerprint["manifest_hash"], "backbone": backbone, "size": size,
        "gpu_memory_target_gb": float(gpu_memory_target_gb), "in_channels": channels[0], "target_spacing": spacing,
        "orientation": STORE_ORIENTATION, "intensity": intensity, "foreground": foreground, "store_dtype": STORE_DTYPE,
        "input_size": s, "uniform_crop_fraction": UNIFORM_CROP_FRACTION,
        "backbone_sizes": backbone_sizes(backbone, size), "mim": mim,
        "effective_batch_subvolumes": effective, "batch_by_device_count": batches, "lr": lr, "explain": explain,
    }
    return plan
