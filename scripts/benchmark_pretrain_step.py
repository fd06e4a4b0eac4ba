#!/usr/bin/env python
"""Time one MiM pre-training step (forward + backward of one L1 crop = 21 sub-volumes).

Prints one JSON line per configuration: median seconds per L1 crop after warm-up, peak memory,
parameter count. Configurations: hybrid base, hybrid tiny and swin base at S = 96 by default; fp32 on
the CPU, and bf16 autocast as well where a GPU exists. Each configuration runs in its own process
so that the CPU peak memory (max RSS) is its own.

    python scripts/benchmark_pretrain_step.py                       # the full table (slow on CPU)
    python scripts/benchmark_pretrain_step.py --configs hybrid:tiny --input-size 64 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

DEFAULT_CONFIGS = "hybrid:base,hybrid:tiny,swin:base"


def run_one(backbone: str, size: str, input_size: int, device: str, dtype: str, warmup: int, repeats: int,
            checkpointing: bool) -> dict:
    import torch

    from mim_nnunet.backbones import build_encoder
    from mim_nnunet.mim import MiM, MiMConfig

    cfg = MiMConfig(input_size=(input_size,) * 3)
    encoder, decoder_sizes = build_encoder(backbone, size, 1, cfg.input_size,
                                           **({"use_checkpoint": True} if checkpointing else {}))
    model = MiM(encoder, cfg, **decoder_sizes).to(device)
    crop = torch.randn(1, 1, *cfg.l1_crop_size, device=device)
    autocast = torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=(dtype == "bf16"))
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(warmup + repeats):
        g = torch.Generator(device=device).manual_seed(i)
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with autocast:
            out = model(crop, generator=g)
        out["loss"].backward()
        model.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    peak_mb = (torch.cuda.max_memory_allocated() / 2 ** 20 if device == "cuda"
               else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return {"backbone": backbone, "size": size, "input_size": input_size, "device": device, "dtype": dtype,
            "sec_per_l1_crop_median": round(statistics.median(times), 4), "sec_all": [round(t, 4) for t in times],
            "subvolumes_per_crop": sum(lvl["inputs"].shape[0] for lvl in out["levels"]),
            "peak_memory_mb": round(peak_mb, 1), "peak_memory_kind": "cuda_allocated" if device == "cuda" else "max_rss",
            "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
            "threads": torch.get_num_threads(), "activation_checkpointing": checkpointing}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default=DEFAULT_CONFIGS, help="backbone:size list (default: %(default)s)")
    parser.add_argument("--input-size", type=int, default=96, help="S per axis, a multiple of 32 (default: 96)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--checkpointing", action="store_true",
                        help="swin only: SwinUNETR's per-block activation checkpointing (use_checkpoint)")
    parser.add_argument("--one", help=argparse.SUPPRESS)       # internal: backbone:size:device:dtype
    args = parser.parse_args()

    if args.one:
        backbone, size, device, dtype = args.one.split(":")
        print(json.dumps(run_one(backbone, size, args.input_size, device, dtype, args.warmup, args.repeats,
                                 args.checkpointing)))
        return 0

    import torch
    plans = [("cpu", "fp32")] if not torch.cuda.is_available() else [("cuda", "fp32"), ("cuda", "bf16")]
    status = 0
    for config in args.configs.split(","):
        for device, dtype in plans:
            cmd = [sys.executable, __file__, "--one", f"{config}:{device}:{dtype}", "--input-size",
                   str(args.input_size), "--warmup", str(args.warmup), "--repeats", str(args.repeats)]
            cmd += ["--checkpointing"] if args.checkpointing else []
            result = subprocess.run(cmd, capture_output=True, encoding="utf-8", errors="replace")
            if result.returncode != 0:
                status = 1
                tail = (result.stderr.strip().splitlines() or ["no output"])[-1]
                if result.returncode < 0:   # e.g. SIGKILL from the kernel's out-of-memory killer
                    tail = f"killed by signal {-result.returncode} (out of memory?); last output: {tail}"
                print(json.dumps({"config": config, "device": device, "dtype": dtype, "error": tail}))
            else:
                print(result.stdout.strip(), flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
