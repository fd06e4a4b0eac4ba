#!/usr/bin/env python
"""Time one MiM pre-training step (forward + backward of one L1 crop = 21 sub-volumes).

Prints one JSON line per configuration: median seconds per L1 crop after warm-up, peak memory,
parameter counts (whole MiM model and encoder). Configurations: hybrid base, hybrid tiny, swin base and
resenc tiny/M/L at S = 96 by default; fp32 on the CPU, and bf16 autocast as well where a GPU exists. Each
configuration runs in its own process so that the CPU peak memory (max RSS) is its own; with
``--memory-limit-gb`` that process gets an address-space limit and a configuration that does not fit
reports where it failed instead of taking the machine down.

    python scripts/benchmark_pretrain_step.py                       # the full table (slow on CPU)
    python scripts/benchmark_pretrain_step.py --configs hybrid:tiny --input-size 64 --repeats 2
    python scripts/benchmark_pretrain_step.py --configs resenc:L --memory-limit-gb 18 --levels 1
"""

from __future__ import annotations

import argparse
import functools
import json
import resource
import statistics
import subprocess
import sys
import time

DEFAULT_CONFIGS = "hybrid:base,hybrid:tiny,swin:base,resenc:tiny,resenc:M,resenc:L"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_one(backbone: str, size: str, input_size: int, device: str, dtype: str, warmup: int, repeats: int,
            checkpointing: bool, levels: int = 3) -> dict:
    import torch

    from mim_nnunet.backbones import build_encoder
    from mim_nnunet.mim import MiM, MiMConfig
    from mim_nnunet.mim.config import align_dim_for

    # the projection width the plan gives this size (the tiny size's is narrower than the paper's 2048)
    cfg = MiMConfig(input_size=(input_size,) * 3, levels=levels, align_dim=align_dim_for(size))
    encoder, decoder_sizes = build_encoder(backbone, size, 1, cfg.input_size,
                                           **({"use_checkpoint": True} if checkpointing else {}))
    model = MiM(encoder, cfg, **decoder_sizes).to(device)
    crop = torch.randn(1, 1, *cfg.l1_crop_size, device=device)
    autocast = torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=(dtype == "bf16"))
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times, sub_volumes = [], 0
    for i in range(warmup + repeats):
        g = torch.Generator(device=device).manual_seed(i)
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        try:
            with autocast:
                out = model(crop, generator=g)
            sub_volumes = sum(lvl["inputs"].shape[0] for lvl in out["levels"])
            out["loss"].backward()
        except (RuntimeError, MemoryError) as exc:   # e.g. the address-space limit: say where it stopped
            return {"backbone": backbone, "size": size, "input_size": input_size, "device": device, "dtype": dtype,
                    "levels": levels, "error": (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300],
                    "failed_in_step": i, "peak_memory_mb_at_failure": round(peak_rss_mb(), 1),
                    "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
                    "encoder_params_m": round(sum(p.numel() for p in encoder.parameters()) / 1e6, 2)}
        model.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    peak_mb = torch.cuda.max_memory_allocated() / 2 ** 20 if device == "cuda" else peak_rss_mb()
    return {"backbone": backbone, "size": size, "input_size": input_size, "device": device, "dtype": dtype,
            "sec_per_l1_crop_median": round(statistics.median(times), 4), "sec_all": [round(t, 4) for t in times],
            "levels": levels, "subvolumes_per_crop": sub_volumes,
            "peak_memory_mb": round(peak_mb, 1), "peak_memory_kind": "cuda_allocated" if device == "cuda" else "max_rss",
            "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
            "encoder_params_m": round(sum(p.numel() for p in encoder.parameters()) / 1e6, 2),
            "threads": torch.get_num_threads(), "activation_checkpointing": checkpointing}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default=DEFAULT_CONFIGS, help="backbone:size list (default: %(default)s)")
    parser.add_argument("--input-size", type=int, default=96, help="S per axis, a multiple of 32 (default: 96)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--checkpointing", action="store_true",
                        help="swin and resenc: activation checkpointing (use_checkpoint; swin: per block, "
                             "resenc: per stage)")
    parser.add_argument("--levels", type=int, default=3, choices=(1, 2, 3),
                        help="MiM levels per step (1: one sub-volume per crop, to measure what does not fit whole)")
    parser.add_argument("--memory-limit-gb", type=float, default=None,
                        help="address-space limit of each configuration's process (virtual memory, above the RSS)")
    parser.add_argument("--one", help=argparse.SUPPRESS)       # internal: backbone:size:device:dtype
    args = parser.parse_args()

    if args.one:
        backbone, size, device, dtype = args.one.split(":")
        row = run_one(backbone, size, args.input_size, device, dtype, args.warmup, args.repeats, args.checkpointing,
                      args.levels)
        print(json.dumps(row))
        return 1 if "error" in row else 0

    import torch
    plans = [("cpu", "fp32")] if not torch.cuda.is_available() else [("cuda", "fp32"), ("cuda", "bf16")]
    status = 0
    for config in args.configs.split(","):
        for device, dtype in plans:
            cmd = [sys.executable, __file__, "--one", f"{config}:{device}:{dtype}", "--input-size",
                   str(args.input_size), "--warmup", str(args.warmup), "--repeats", str(args.repeats),
                   "--levels", str(args.levels)]
            cmd += ["--checkpointing"] if args.checkpointing else []
            limit = None
            if args.memory_limit_gb:
                limit = functools.partial(resource.setrlimit, resource.RLIMIT_AS,
                                          (int(args.memory_limit_gb * 2 ** 30),) * 2)
            result = subprocess.run(cmd, capture_output=True, encoding="utf-8", errors="replace", preexec_fn=limit)
            if result.returncode == 1 and result.stdout.strip().startswith("{"):
                status = 1
                print(result.stdout.strip(), flush=True)    # the configuration's own account of its failure
            elif result.returncode != 0:
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
