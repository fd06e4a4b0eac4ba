#!/usr/bin/env python
"""Time one MiM pre-training step (forward + backward of one L1 crop = 21 sub-volumes).

Per configuration (backbone, size, input size S, sub-volume chunk, activation checkpointing, compile,
channels-last, device, dtype): median seconds per L1 crop after warm-up, sub-volumes per second, peak
memory, parameter counts (whole MiM model and encoder), and on a GPU the FLOPs of one step
(``torch.utils.flop_counter``), the achieved TFLOP/s and, with ``--peak-tflops``, the MFU.
Configurations: hybrid base, hybrid tiny, swin base and resenc tiny/M/L at S = 96 by default, each at
every ``--chunks`` value (0 = one shot, else ``MiM.forward_backward`` in chunks of that many
sub-volumes); fp32 on the CPU, and bf16 autocast as well where a GPU exists (``--dtypes`` to choose).

The step's levers, each a flag: ``--checkpointing`` (every backbone's ``use_checkpoint``), ``--compile``
(``compile_parts``, as ``mim_pretrain --compile``; the first step, which compiles, is a warm-up),
``--channels-last`` (weights and crops in ``channels_last_3d``), ``--optimizer adamw|fused`` (times the
AdamW step apart, plain or fused kernel).

Each configuration runs in its own process so that the CPU peak memory (max RSS) is its own (on a GPU:
``torch.cuda.max_memory_allocated``); with ``--memory-limit-gb`` that process gets an address-space
limit and a configuration that does not fit reports where it failed instead of taking the machine down.
Prints the host (:mod:`mim_nnunet.common.host`: CPU model, torch's CPU capability, threads, GPU, a
2-second fp32 matmul probe) and a markdown table; ``--json`` writes the rows, each with the host's probe
under ``host``.

    python scripts/benchmark_pretrain_step.py                       # the full table (slow on CPU)
    python scripts/benchmark_pretrain_step.py -configs hybrid:tiny -input_size 64 -chunks 0,1,4
    python scripts/benchmark_pretrain_step.py -configs resenc:L -memory_limit_gb 18 -levels 1
    python scripts/benchmark_pretrain_step.py -configs hybrid:base -chunks 4 --checkpointing
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
from pathlib import Path

DEFAULT_CONFIGS = "hybrid:base,hybrid:tiny,swin:base,resenc:tiny,resenc:M,resenc:L"
# The markdown table's columns: (header, row key).
TABLE = (("backbone", "backbone"), ("size", "size"), ("S", "input_size"), ("chunk", "chunk"),
         ("ckpt", "activation_checkpointing"), ("compile", "compile"), ("channels last", "channels_last"),
         ("device", "device"), ("dtype", "dtype"),
         ("s / crop", "sec_per_l1_crop_median"), ("sub-vol / s", "subvolumes_per_s"),
         ("optimizer s", "optimizer_sec_median"), ("peak MB", "peak_memory_mb"), ("peak kind", "peak_memory_kind"),
         ("TFLOP / step", "tflop_per_step"),
         ("TFLOP/s", "tflops"), ("MFU", "mfu"), ("error", "error"))


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_one(backbone: str, size: str, input_size: int, device: str, dtype: str, warmup: int, repeats: int,
            checkpointing: bool, levels: int = 3, chunk: int = 0, peak_tflops: float = 0.0, compiled: bool = False,
            channels_last: bool = False, optimizer: str = "none") -> dict:
    import torch

    from mim_nnunet.backbones import build_encoder
    from mim_nnunet.mim import MiM, MiMConfig
    from mim_nnunet.mim.config import align_dim_for
    from mim_nnunet.pretrain.engine import compile_parts

    # the projection width the plan gives this size (the tiny size's is narrower than the paper's 2048)
    cfg = MiMConfig(input_size=(input_size,) * 3, levels=levels, align_dim=align_dim_for(size))
    encoder, decoder_sizes = build_encoder(backbone, size, 1, cfg.input_size,
                                           **({"use_checkpoint": True} if checkpointing else {}))
    model = MiM(encoder, cfg, **decoder_sizes).to(device)
    crop = torch.randn(1, 1, *cfg.l1_crop_size, device=device)
    if channels_last:
        model, crop = model.to(memory_format=torch.channels_last_3d), crop.to(memory_format=torch.channels_last_3d)
    if compiled:
        compile_parts(model)
    # the optimiser step, timed apart from forward + backward (its state counts in the peak memory)
    opt = None if optimizer == "none" else torch.optim.AdamW(model.parameters(), lr=1e-4, fused=optimizer == "fused")

    def autocast():
        return torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=(dtype == "bf16"))

    def step(i: int) -> int:
        """One step's forward and backward; returns its sub-volume count."""
        g = torch.Generator(device=device).manual_seed(i)
        if chunk:
            out = model.forward_backward(crop, lambda loss: loss.backward(), chunk, generator=g, autocast=autocast)
        else:
            with autocast():
                out = model(crop, generator=g)
            out["loss"].backward()
        return sum(lvl["inputs"].shape[0] for lvl in out["levels"])

    described = {"backbone": backbone, "size": size, "input_size": input_size, "chunk": chunk, "device": device,
                 "dtype": dtype, "levels": levels, "activation_checkpointing": checkpointing, "compile": compiled,
                 "channels_last": channels_last, "optimizer": optimizer,
                 "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
                 "encoder_params_m": round(sum(p.numel() for p in encoder.parameters()) / 1e6, 2),
                 "threads": torch.get_num_threads()}
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times, opt_times, sub_volumes = [], [], 0
    for i in range(warmup + repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        try:
            sub_volumes = step(i)
        except (RuntimeError, MemoryError) as exc:   # e.g. the address-space limit: say where it stopped
            return {**described, "error": (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300],
                    "failed_in_step": i, "peak_memory_mb_at_failure": round(peak_rss_mb(), 1)}
        if device == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
        if opt is not None:
            start = time.perf_counter()
            opt.step()
            if device == "cuda":
                torch.cuda.synchronize()
            if i >= warmup:
                opt_times.append(time.perf_counter() - start)
        model.zero_grad(set_to_none=True)
    peak_mb = torch.cuda.max_memory_allocated() / 2 ** 20 if device == "cuda" else peak_rss_mb()
    seconds = statistics.median(times)
    row = {**described, "sec_per_l1_crop_median": round(seconds, 4), "sec_all": [round(t, 4) for t in times],
           "subvolumes_per_crop": sub_volumes, "subvolumes_per_s": round(sub_volumes / seconds, 3),
           "peak_memory_mb": round(peak_mb, 1), "peak_memory_kind": "cuda_allocated" if device == "cuda" else "max_rss"}
    if opt_times:
        row["optimizer_sec_median"] = round(statistics.median(opt_times), 4)
    if device == "cuda":       # FLOPs of one more step, counted apart from the timed ones
        from torch.utils.flop_counter import FlopCounterMode
        counter = FlopCounterMode(display=False)
        with counter:
            step(warmup + repeats)
        model.zero_grad(set_to_none=True)
        tflop = counter.get_total_flops() / 1e12
        row.update(tflop_per_step=round(tflop, 4), tflops=round(tflop / seconds, 3))
        if peak_tflops:
            row["mfu"] = round(tflop / seconds / peak_tflops, 4)
    return row


def markdown(rows) -> str:
    """The rows as a markdown table (TABLE's columns; empty where a row has no value)."""
    lines = ["| " + " | ".join(h for h, _ in TABLE) + " |", "|" + "---|" * len(TABLE)]
    for row in rows:
        lines.append("| " + " | ".join(str(row.get(key, "")) for _, key in TABLE) + " |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    from mim_nnunet.cli.flags import add_flag
    parser = argparse.ArgumentParser(prog="benchmark_pretrain_step.py", description=__doc__,
                                    formatter_class=argparse.RawDescriptionHelpFormatter)
    add_flag(parser, "-configs", "--configs", default=DEFAULT_CONFIGS, help="backbone:size list (default: %(default)s)")
    add_flag(parser, "-input_size", "--input-size", type=int, default=96,
             help="S per axis, a multiple of 32 (default: 96)")
    add_flag(parser, "-warmup", "--warmup", type=int, default=1)
    add_flag(parser, "-repeats", "--repeats", type=int, default=3)
    parser.add_argument("--checkpointing", action="store_true",
                        help="activation checkpointing (use_checkpoint; hybrid: per conv and ViT block, swin: per "
                             "block, resenc: per stage)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the encoder and decoder")
    add_flag(parser, "--channels_last", "--channels-last", action="store_true",
             help="channels_last_3d weights and crops")
    add_flag(parser, "-optimizer", "--optimizer", choices=("none", "adamw", "fused"), default="none",
             help="also time an AdamW step after each backward (fused: PyTorch's fused kernel)")
    add_flag(parser, "-dtypes", "--dtypes", default=None,
             help="fp32 and/or bf16 (autocast), comma-separated (default: fp32 on CPU, fp32,bf16 on GPU)")
    add_flag(parser, "-levels", "--levels", type=int, default=3, choices=(1, 2, 3),
             help="MiM levels per step (1: one sub-volume per crop, to measure what does not fit whole)")
    add_flag(parser, "-memory_limit_gb", "--memory-limit-gb", type=float, default=None,
             help="address-space limit of each configuration's process (virtual memory, above the RSS)")
    add_flag(parser, "-chunks", "--chunks", default="0",
             help="sub-volume chunks to run each configuration at, 0 = one shot (default: %(default)s)")
    add_flag(parser, "-peak_tflops", "--peak-tflops", type=float, default=0.0,
             help="the GPU's peak TFLOP/s at the benchmark's dtype, for the MFU column (default: none)")
    add_flag(parser, "-json", "--json", type=Path, default=None, help="write the rows to this JSON file")
    parser.add_argument("-one", help=argparse.SUPPRESS)       # internal: backbone:size:device:dtype:chunk
    return parser


def main() -> int:
    parser = build_parser()
    args = parser.parse_args()

    if args.one:
        backbone, size, device, dtype, chunk = args.one.split(":")
        row = run_one(backbone, size, args.input_size, device, dtype, args.warmup, args.repeats, args.checkpointing,
                      args.levels, int(chunk), args.peak_tflops, args.compile, args.channels_last, args.optimizer)
        print(json.dumps(row))
        return 1 if "error" in row else 0

    import torch

    from mim_nnunet.common.host import probe_host
    host = probe_host()          # at the threads each configuration's process gets (the same default)
    print(host.line(), file=sys.stderr, flush=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtypes = (args.dtypes or ("fp32,bf16" if device == "cuda" else "fp32")).split(",")
    if set(dtypes) - {"fp32", "bf16"}:
        parser.error(f"-dtypes: fp32 and/or bf16, got {args.dtypes}")
    plans = [(device, dtype) for dtype in dtypes]
    status, rows = 0, []
    for config in args.configs.split(","):
        for chunk in (int(c) for c in args.chunks.split(",")):
            for device, dtype in plans:
                row = dict(run_in_process(args, config, device, dtype, chunk), host=host.as_dict())
                status |= "error" in row
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)     # progress, one line per configuration
    print(host.line() + "\n")
    print(markdown(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
    return int(status)


def run_in_process(args, config: str, device: str, dtype: str, chunk: int) -> dict:
    """One configuration in a fresh process (its own peak RSS); its row, or its failure as a row."""
    cmd = [sys.executable, __file__, "-one", f"{config}:{device}:{dtype}:{chunk}", "-input_size",
           str(args.input_size), "-warmup", str(args.warmup), "-repeats", str(args.repeats),
           "-levels", str(args.levels), "-peak_tflops", str(args.peak_tflops), "-optimizer", args.optimizer]
    cmd += [flag for flag, on in (("--checkpointing", args.checkpointing), ("--compile", args.compile),
                                  ("--channels_last", args.channels_last)) if on]
    limit = None
    if args.memory_limit_gb:
        limit = functools.partial(resource.setrlimit, resource.RLIMIT_AS, (int(args.memory_limit_gb * 2 ** 30),) * 2)
    result = subprocess.run(cmd, capture_output=True, encoding="utf-8", errors="replace", preexec_fn=limit)
    if result.returncode in (0, 1) and result.stdout.strip().startswith("{"):
        return json.loads(result.stdout.strip().splitlines()[-1])   # a row, or the configuration's own failure
    tail = (result.stderr.strip().splitlines() or ["no output"])[-1]
    if result.returncode < 0:   # e.g. SIGKILL from the kernel's out-of-memory killer
        tail = f"killed by signal {-result.returncode} (out of memory?); last output: {tail}"
    backbone, size = config.split(":")
    return {"backbone": backbone, "size": size, "input_size": args.input_size, "chunk": chunk, "device": device,
            "dtype": dtype, "error": tail}


if __name__ == "__main__":
    sys.exit(main())
