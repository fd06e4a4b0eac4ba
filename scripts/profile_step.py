#!/usr/bin/env python
"""Where the CPU time of the demo's work goes: a per-op table (torch.profiler, self CPU time) for

  pretrain   one MiM pre-training step of the demo (hybrid tiny, S = 32: one 64^3 L1 crop = 21
             sub-volumes, forward + backward + fused AdamW step), as the engine runs it on a CPU
  finetune   one MiMUNETR tiny training iteration at the demo's patch (64 x 64 x 32 x y z, batch 2): forward,
             nnU-Net's Dice + CE loss, backward, AdamW step; channels-last (NDHWC) as our trainers train on
             the CPU, NCDHW with --contiguous
  predict    a sliding-window prediction of MiMUNETR tiny over a -predict_shape volume in the demo's patch
             (nnU-Net's window placement at step 0.5 and its Gaussian; no mirroring)

each after -warmup untimed runs, profiled over -steps runs, with the host's probe (CPU model, torch's CPU
capability, threads, GPU, fp32 matmul GFLOP/s; mim_nnunet.common.host) above the tables. The same work on
an AVX2-only host's kernels (any x86 CPU):

    python scripts/profile_step.py
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 python scripts/profile_step.py
    python scripts/profile_step.py -parts pretrain -rows 40 --group_by_shape -json ops.json

Times on a busy machine are distorted: profile on an idle one and give the host line with every table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))       # benchmark_finetune's network, loss, windows

PARTS = ("pretrain", "finetune", "predict")
DEMO_PATCH_ZYX = (32, 64, 64)                # plans/demo/demo_ct.json patch_xyz (64, 64, 32), as (z, y, x)
CLASSES = 5                                  # the demo's background + spleen, liver, stomach, aorta


def pretrain_step(input_size: int = 32):
    """The demo's pre-training step: returns a callable that runs one step."""
    import torch

    from mim_nnunet.backbones import build_encoder
    from mim_nnunet.mim import MiM, MiMConfig
    from mim_nnunet.mim.config import align_dim_for

    torch.manual_seed(0)
    cfg = MiMConfig(input_size=(input_size,) * 3, align_dim=align_dim_for("tiny"))
    encoder, decoder_sizes = build_encoder("hybrid", "tiny", 1, cfg.input_size)
    model = MiM(encoder, cfg, **decoder_sizes)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    crop = torch.rand(1, 1, *cfg.l1_crop_size)
    counter = [0]

    def step():
        g = torch.Generator().manual_seed(counter[0])
        counter[0] += 1
        out = model(crop, generator=g)
        out["loss"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def finetune_iteration(patch=DEMO_PATCH_ZYX, batch: int = 2, channels_last: bool = True):
    """One MiMUNETR tiny training iteration at the demo's patch (channels-last as the trainers' CPU runs, or
    NCDHW): returns a callable."""
    import torch
    from benchmark_finetune import loss_for

    network = _mim_unetr(patch)
    if channels_last:
        network = network.to(memory_format=torch.channels_last_3d)
    network.train()
    optimizer = torch.optim.AdamW(network.parameters(), lr=3e-3, weight_decay=1e-5)
    loss_fn = loss_for(0)                      # MiMUNETR trains without deep supervision
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 1, *patch, generator=g)
    y = torch.randint(0, CLASSES, (batch, 1, *patch), generator=g)

    def iteration():
        loss = loss_fn(network(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return iteration


def prediction(shape_xyz, patch=DEMO_PATCH_ZYX):
    """A sliding-window prediction of MiMUNETR tiny over a random volume of ``shape_xyz``: returns a callable."""
    import torch
    from nnunetv2.inference.sliding_window_prediction import compute_gaussian, compute_steps_for_sliding_window

    network = _mim_unetr(patch)
    network.eval()
    shape = tuple(shape_xyz[::-1])
    image = torch.randn(1, *shape, generator=torch.Generator().manual_seed(0))
    steps = compute_steps_for_sliding_window(shape, patch, 0.5)
    gaussian = compute_gaussian(patch, dtype=torch.float32, device=torch.device("cpu"))

    def predict():
        logits = torch.zeros((CLASSES, *shape))
        with torch.no_grad():
            for z in steps[0]:
                for y in steps[1]:
                    for x in steps[2]:
                        region = (slice(z, z + patch[0]), slice(y, y + patch[1]), slice(x, x + patch[2]))
                        logits[(slice(None), *region)] += network(image[(slice(None), *region)][None])[0] * gaussian
        return logits
    return predict


def _mim_unetr(patch):
    import torch

    from mim_nnunet.networks import MIMUNETR_ARCH_KWARGS, MIMUNETR_CLASS_NAME, build_network
    torch.manual_seed(0)
    kwargs = {**MIMUNETR_ARCH_KWARGS, "img_size": list(patch), "size": "tiny", "feature_size": 12}
    return build_network(MIMUNETR_CLASS_NAME, kwargs, 1, CLASSES)


def profile(work, warmup: int, steps: int, group_by_shape: bool):
    """``work`` run ``warmup`` times, then ``steps`` times under torch.profiler: (key averages, seconds per run)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile
    for _ in range(warmup):
        work()
    with torch_profile(activities=[ProfilerActivity.CPU], record_shapes=group_by_shape) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            work()
        seconds = (time.perf_counter() - start) / steps
    return prof.key_averages(group_by_input_shape=group_by_shape), seconds


def top_ops(averages, rows: int, steps: int):
    """The ``rows`` ops with the most self CPU time: name, calls, self and total CPU ms per run, share of the
    self time (%), input shapes (when grouped by shape)."""
    total = sum(e.self_cpu_time_total for e in averages) or 1.0
    ranked = sorted(averages, key=lambda e: e.self_cpu_time_total, reverse=True)[:rows]
    return [{"op": e.key, "calls_per_run": e.count / steps, "self_cpu_ms": round(e.self_cpu_time_total / 1e3 / steps, 3),
             "cpu_total_ms": round(e.cpu_time_total / 1e3 / steps, 3),
             "self_share_pct": round(100 * e.self_cpu_time_total / total, 1),
             **({"input_shapes": str(e.input_shapes)} if getattr(e, "input_shapes", None) else {})} for e in ranked]


def markdown(part: str, seconds: float, ops) -> str:
    lines = [f"### {part}: {seconds:.3f} s per run (profiled; the profiler adds its own overhead)", "",
             "| op | calls / run | self CPU ms / run | share of self CPU (%) | CPU total ms / run |"
             + (" input shapes |" if ops and "input_shapes" in ops[0] else ""),
             "|---|---|---|---|---|" + ("---|" if ops and "input_shapes" in ops[0] else "")]
    for o in ops:
        lines.append(f"| {o['op']} | {o['calls_per_run']:g} | {o['self_cpu_ms']} | {o['self_share_pct']} | "
                     f"{o['cpu_total_ms']} |" + (f" {o['input_shapes']} |" if "input_shapes" in o else ""))
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-parts", default=",".join(PARTS), help="comma-separated, of %(default)s")
    parser.add_argument("-warmup", type=int, default=1, help="untimed runs first (default: %(default)s)")
    parser.add_argument("-steps", type=int, default=3, help="profiled runs (default: %(default)s)")
    parser.add_argument("-rows", type=int, default=25, help="ops per table (default: %(default)s)")
    parser.add_argument("-input_size", type=int, default=32, help="pre-training S (default: the demo's 32)")
    parser.add_argument("-predict_shape", type=int, nargs=3, default=(96, 96, 48), metavar=("X", "Y", "Z"),
                        help="volume of the prediction (default: %(default)s)")
    parser.add_argument("-threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--group_by_shape", action="store_true", help="one row per op and input shapes")
    parser.add_argument("--contiguous", action="store_true",
                        help="fine-tune in NCDHW instead of the trainers' channels-last (the CPU time before it)")
    parser.add_argument("-json", type=Path, default=None, help="write the host and the tables' rows to this file")
    args = parser.parse_args(argv)
    parts = args.parts.split(",")
    if set(parts) - set(PARTS):
        parser.error(f"-parts: {', '.join(sorted(set(parts) - set(PARTS)))} not among {', '.join(PARTS)}")

    import torch

    from mim_nnunet.common.host import probe_host
    if args.threads:
        torch.set_num_threads(args.threads)
    host = probe_host()
    print(host.line() + "\n", flush=True)
    builders = {"pretrain": lambda: pretrain_step(args.input_size),
                "finetune": lambda: finetune_iteration(channels_last=not args.contiguous),
                "predict": lambda: prediction(args.predict_shape)}
    record = {"host": host.as_dict(), "finetune_memory_format": "NCDHW" if args.contiguous else "NDHWC", "parts": {}}
    for part in parts:
        averages, seconds = profile(builders[part](), args.warmup, args.steps, args.group_by_shape)
        ops = top_ops(averages, args.rows, args.steps)
        record["parts"][part] = {"seconds_per_run": round(seconds, 4), "steps": args.steps, "ops": ops}
        print(markdown(part, seconds, ops) + "\n", flush=True)
    if args.json:
        args.json.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
