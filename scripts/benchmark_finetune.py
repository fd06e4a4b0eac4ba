#!/usr/bin/env python
"""Fine-tuning cost next to stock nnU-Net: one training iteration and one sliding-window prediction of
MiMUNETR (what nnUNetTrainerMiM trains) and of nnU-Net's default 3d_fullres U-Net on the same patch.

Training iteration: batch 2, patch P^3 (default 96), forward + nnU-Net's Dice + CE loss (with deep
supervision for the U-Net, as nnU-Net trains it) + backward + optimiser step (AdamW for MiMUNETR, nnU-Net's
SGD for the U-Net); median of -repeats after -warmup. Prediction: a CT of -predict_shape (default 512 x 512
x 100, x y z) in P^3 windows at nnU-Net's tile step 0.5 with its Gaussian weighting (nnU-Net's own window
placement and Gaussian), no test-time mirroring. The U-Net's topology comes from nnU-Net's planner
(get_pool_and_conv_props at 1 mm for the patch; 32 ... 320 features, 2 convs per stage). One JSON line per
network (each with the host's probe under ``host``: CPU model, torch's CPU capability, threads, GPU, a
2-second fp32 matmul probe; :mod:`mim_nnunet.common.host`), then the host's line and a markdown table.

    python scripts/benchmark_finetune.py                                  # the default sizes (slow on a CPU)
    python scripts/benchmark_finetune.py -size tiny -patch 64 -predict_shape 128 128 64 -repeats 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

CLASSES = 14          # BTCV's 13 organs + background


def nnunet_default_unet(patch: int, classes: int):
    """nnU-Net's default 3d_fullres PlainConvUNet for an isotropic 1 mm patch, as its planner lays it out."""
    from dynamic_network_architectures.architectures.unet import PlainConvUNet
    from nnunetv2.experiment_planning.experiment_planners.network_topology import get_pool_and_conv_props
    from torch import nn

    _, pools, kernels, _, _ = get_pool_and_conv_props([1.0] * 3, (patch,) * 3, 4, 999999)
    n = len(pools)
    return PlainConvUNet(1, n, [min(32 * 2 ** i, 320) for i in range(n)], nn.Conv3d, kernels, pools, [2] * n, classes,
                         [2] * (n - 1), conv_bias=True, norm_op=nn.InstanceNorm3d,
                         norm_op_kwargs={"eps": 1e-5, "affine": True}, nonlin=nn.LeakyReLU,
                         nonlin_kwargs={"inplace": True}, deep_supervision=True)


def mim_unetr(size: str, patch: int, classes: int):
    from mim_nnunet.networks import MIMUNETR_ARCH_KWARGS, MIMUNETR_CLASS_NAME, build_network
    kwargs = {**MIMUNETR_ARCH_KWARGS, "img_size": [patch] * 3}
    if size == "tiny":
        kwargs.update(size="tiny", feature_size=12)
    return build_network(MIMUNETR_CLASS_NAME, kwargs, 1, classes)


def loss_for(deep_supervision: int):
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
    loss = DC_and_CE_loss({"batch_dice": False, "smooth": 1e-5, "do_bg": False, "ddp": False}, {}, weight_ce=1,
                          weight_dice=1, dice_class=MemoryEfficientSoftDiceLoss)
    if deep_supervision:
        weights = [1 / 2 ** i for i in range(deep_supervision)]
        weights[-1] = 0
        loss = DeepSupervisionWrapper(loss, [w / sum(weights) for w in weights])
    return loss


def time_training(network, optimizer, patch: int, device: str, warmup: int, repeats: int) -> list:
    import torch
    network.train()
    x = torch.randn(2, 1, patch, patch, patch, device=device)
    y = torch.randint(0, CLASSES, (2, 1, patch, patch, patch), device=device)
    with torch.no_grad():
        out = network(x)
    scales = len(out) if isinstance(out, (list, tuple)) else 0
    loss_fn = loss_for(scales)
    targets = [y] + [torch.nn.functional.interpolate(y.float(), size=o.shape[2:], mode="nearest").long()
                     for o in (out[1:] if scales else [])]
    times = []
    for i in range(warmup + repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = network(x)
        loss = loss_fn(out, targets) if scales else loss_fn(out, y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


def time_prediction(network, patch: int, shape_xyz, device: str) -> dict:
    """nnU-Net's sliding window (its steps and Gaussian) over a random CT of ``shape_xyz``."""
    import torch
    from nnunetv2.inference.sliding_window_prediction import compute_gaussian, compute_steps_for_sliding_window

    network.eval()
    shape = tuple(shape_xyz[::-1])                     # (z, y, x)
    image = torch.randn(1, *shape, device=device)
    steps = compute_steps_for_sliding_window(shape, (patch,) * 3, 0.5)
    gaussian = compute_gaussian((patch,) * 3, dtype=torch.float32, device=torch.device(device))
    logits = torch.zeros((CLASSES, *shape), device=device)
    weights = torch.zeros(shape, device=device)
    if device == "cuda":
        torch.cuda.synchronize()
    start, windows = time.perf_counter(), 0
    with torch.no_grad():
        for z in steps[0]:
            for y in steps[1]:
                for x in steps[2]:
                    region = (slice(z, z + patch), slice(y, y + patch), slice(x, x + patch))
                    out = network(image[(slice(None), *region)][None])
                    out = out[0] if isinstance(out, (list, tuple)) else out
                    logits[(slice(None), *region)] += out[0] * gaussian
                    weights[region] += gaussian
                    windows += 1
    if device == "cuda":
        torch.cuda.synchronize()
    return {"predict_seconds": round(time.perf_counter() - start, 2), "windows": windows}


def build_parser() -> argparse.ArgumentParser:
    from mim_nnunet.cli.flags import add_flag
    parser = argparse.ArgumentParser(prog="benchmark_finetune.py", description=__doc__,
                                    formatter_class=argparse.RawDescriptionHelpFormatter)
    add_flag(parser, "-size", "--size", choices=("base", "tiny"), default="base", help="MiMUNETR size (default: base)")
    add_flag(parser, "-patch", "--patch", type=int, default=96, help="patch edge, a multiple of 32 (default: 96)")
    add_flag(parser, "-predict_shape", "--predict_shape", type=int, nargs=3, default=(512, 512, 100),
             metavar=("X", "Y", "Z"))
    add_flag(parser, "-warmup", "--warmup", type=int, default=1)
    add_flag(parser, "-repeats", "--repeats", type=int, default=3)
    add_flag(parser, "-device", "--device", choices=("cuda", "cpu"), default=None, help="default: cuda when available")
    parser.add_argument("--no_predict", action="store_true", help="training iterations only")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)

    import torch

    from mim_nnunet.common.host import probe_host
    host = probe_host()
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    rows = []
    # each network trains as its trainer trains it: ours channels-last on the CPU (RunGuards.cpu_channels_last),
    # nnU-Net's in NCDHW; both predict in NCDHW, as nnUNetv2_predict builds them
    for name, build, make_optimizer, channels_last in (
            (f"nnUNetTrainerMiM (MiMUNETR {args.size})", lambda: mim_unetr(args.size, args.patch, CLASSES),
             lambda p: torch.optim.AdamW(p, lr=1e-4, weight_decay=1e-5), device == "cpu"),
            ("nnUNetTrainer (3d_fullres PlainConvUNet)", lambda: nnunet_default_unet(args.patch, CLASSES),
             lambda p: torch.optim.SGD(p, lr=1e-2, momentum=0.99, nesterov=True, weight_decay=3e-5), False)):
        torch.manual_seed(0)
        network = build().to(device)
        if channels_last:
            network = network.to(memory_format=torch.channels_last_3d)
        times = time_training(network, make_optimizer(network.parameters()), args.patch, device, args.warmup,
                              args.repeats)
        network = network.to(memory_format=torch.contiguous_format)
        row = {"network": name, "device": device, "patch": args.patch, "batch": 2,
               "train_memory_format": "NDHWC" if channels_last else "NCDHW",
               "params_m": round(sum(p.numel() for p in network.parameters()) / 1e6, 2),
               "train_iteration_seconds": round(statistics.median(times), 3), "train_all": [round(t, 3) for t in times],
               "threads": torch.get_num_threads(), "host": host.as_dict()}
        if not args.no_predict:
            row.update(time_prediction(network, args.patch, args.predict_shape, device),
                       predict_shape_xyz=list(args.predict_shape))
        if device == "cuda":
            row["peak_memory_mb"] = round(torch.cuda.max_memory_allocated() / 2 ** 20, 1)
            torch.cuda.reset_peak_memory_stats()
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"\n{host.line()}\n\n| network | params (M) | s / training iteration | s / prediction (windows) |\n|---|---|---|---|")
    for r in rows:
        predict = f"{r['predict_seconds']} ({r['windows']})" if "predict_seconds" in r else "-"
        print(f"| {r['network']} | {r['params_m']} | {r['train_iteration_seconds']} | {predict} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
