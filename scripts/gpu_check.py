#!/usr/bin/env python
"""The GPU path in one command (``bash scripts/gpu_check.sh``): every check runs, failed or not, and one
JSON summary says what held (``<out>/gpu_check_summary.json``, rewritten after each check).

Checks (``--checks`` picks some; all by default):
  environment       torch, CUDA device, nnU-Net versions
  precision_steps   two optimiser steps of MiM (tiny, S = 64) per backbone in bf16 autocast and in fp16
                    autocast with a gradient scaler: losses and gradients finite
  pretrain_1gpu     mim_pretrain on one GPU (its NCCL process group), a few steps, export written
  pretrain_torchrun the same through torchrun --nproc_per_node 1
  pretrain_compile  the same with --compile
  benchmark         scripts/benchmark_pretrain_step.py at S = 96: s per L1 crop, peak memory, TFLOP/s, fused
                    AdamW step time, params; then each lever alone on hybrid base in bf16 (chunk 4,
                    activation checkpointing, channels-last, unfused AdamW, torch.compile)
  planner_memory    the planner's modelled step memory next to each measured peak
  nnunet_finetune   nnUNetv2_plan_and_preprocess + one nnUNetv2_train epoch of nnUNetTrainerMiM_1epoch (hybrid
                    base) on CUDA with nnU-Net's default torch.compile, from a 2-step base export

Sized to finish in under 8 minutes on one recent GPU. ``--device cpu`` runs the chosen checks on the CPU
(the tests do, with small subsets). Exit status: 0 all checks held, 1 some failed, 2 no CUDA device for a
CUDA run (every check is then reported as skipped).

    python scripts/gpu_check.py --out gpu_check
    python scripts/gpu_check.py --device cpu --checks environment,precision_steps --backbones hybrid --precisions bf16
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Callable, Dict, List

REPO = Path(__file__).resolve().parents[1]
CHECKS = ("environment", "precision_steps", "pretrain_1gpu", "pretrain_torchrun", "pretrain_compile", "benchmark",
          "planner_memory", "nnunet_finetune")
SUMMARY = "gpu_check_summary.json"
BENCHMARK_CONFIGS = "hybrid:base,hybrid:tiny,swin:base,resenc:M,resenc:L"
FINETUNE_TRAINER = "nnUNetTrainerMiM_1epoch"
# The step's levers, each benchmarked alone (scripts/benchmark_pretrain_step.py flags); the one-shot row of
# the benchmark check, with fused AdamW, is what they are compared with.
LEVERS = {"chunk4": ["-chunks", "4"], "checkpointing": ["--checkpointing"], "channels_last": ["--channels_last"],
          "unfused_adamw": ["-optimizer", "adamw"], "compile": ["--compile"]}
DATASET_ID = 990


def command(name: str) -> str:
    """A console script of this environment (next to this Python), else from PATH."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else (shutil.which(name) or name)


def run(cmd: List[str], env: Dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    result = subprocess.run([str(c) for c in cmd], env=env, capture_output=True, encoding="utf-8", errors="replace",
                            timeout=timeout)
    if result.returncode != 0:
        tail = (result.stderr.strip() or result.stdout.strip()).splitlines()[-5:]
        raise RuntimeError(f"{Path(str(cmd[0])).name} exited {result.returncode}: " + " | ".join(tail))
    return result


class Context:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.device = args.device
        self.work = Path(args.out) / "work"
        self.work.mkdir(parents=True, exist_ok=True)
        self.env = {**os.environ, "nnUNet_raw": str(self.work / "raw"),
                    "nnUNet_preprocessed": str(self.work / "preprocessed"),
                    "nnUNet_results": str(self.work / "results")}
        self.env["nnUNet_extTrainer"] = run([command("mim_nnunet"), "trainers-path"], self.env, 120).stdout.strip()
        self.benchmark_rows: List[Dict] = []

    def scans(self) -> Path:
        """A folder of four CT-like volumes (air, a body, an organ, bone), written once."""
        folder = self.work / "scans"
        if not folder.is_dir():
            write_volumes(folder, 4, (80, 96, 96), labels=False)
        return folder


def write_volumes(folder: Path, n: int, shape, labels: bool) -> None:
    """CT-like volumes in HU (and, with ``labels``, their organ masks); an nnU-Net layout when labelled."""
    import numpy as np
    import SimpleITK as sitk

    rng = np.random.default_rng(0)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    for i in range(n):
        body = (x ** 2 + y ** 2) < 0.8 ** 2
        cz, cy, cx = rng.uniform(-0.3, 0.3, 3)
        organ = ((z - cz) ** 2 + (y - cy) ** 2 + (x - cx) ** 2) < 0.35 ** 2
        hu = np.full(shape, -1000.0) + body * 1040 + organ * 60 + rng.normal(0, 20, shape)
        hu[(np.abs(x - 0.55) < 0.08) & body] = 700
        image = sitk.GetImageFromArray(hu.astype(np.float32))
        image.SetSpacing((1.5, 1.5, 2.0))
        target = folder / ("imagesTr" if labels else "") / (f"case_{i:03d}_0000.nii.gz" if labels else f"s{i}.nii.gz")
        target.parent.mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(image, str(target))
        if labels:
            mask = sitk.GetImageFromArray(organ.astype(np.uint8))
            mask.CopyInformation(image)
            (folder / "labelsTr").mkdir(exist_ok=True)
            sitk.WriteImage(mask, str(folder / "labelsTr" / f"case_{i:03d}.nii.gz"))
    if labels:
        (folder / "dataset.json").write_text(json.dumps({
            "channel_names": {"0": "CT"}, "labels": {"background": 0, "organ": 1}, "numTraining": n,
            "file_ending": ".nii.gz", "name": folder.name}), encoding="utf-8")


# ---------------------------------------------------------------------------------------------------------
# The checks: each returns its details (a dict); an exception marks it failed.

def check_environment(ctx: Context) -> Dict:
    from importlib.metadata import version

    import torch

    from mim_nnunet.common.host import probe_host
    info = {"python": platform.python_version(), "torch": torch.__version__, "nnunetv2": version("nnunetv2"),
            "cuda_available": torch.cuda.is_available(), "cuda_build": torch.version.cuda,
            "host": probe_host().as_dict()}     # CPU model and capability, threads, GPU, matmul GFLOP/s
    if ctx.device == "cuda":
        p = torch.cuda.get_device_properties(0)
        info.update({"gpu": p.name, "gpu_memory_gb": round(p.total_memory / 2 ** 30, 1),
                     "gpu_count": torch.cuda.device_count(), "bf16_supported": torch.cuda.is_bf16_supported(),
                     "nccl": torch.distributed.is_nccl_available()})
    return info


def check_precision_steps(ctx: Context) -> Dict:
    import torch

    from mim_nnunet.mim import MiMConfig, build_mim
    from mim_nnunet.optim import build_adamw
    results, bad = {}, []
    for backbone in ctx.args.backbones.split(","):
        for precision in ctx.args.precisions.split(","):
            torch.manual_seed(0)
            size = ctx.args.precision_input_size
            model = build_mim(backbone, "tiny", MiMConfig(input_size=(size,) * 3)).to(ctx.device)
            optimizer = build_adamw(model, 1e-4, 0.05, (0.9, 0.95))
            dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
            scaler = torch.amp.GradScaler(ctx.device, enabled=precision == "fp16")
            losses, grads_finite = [], True
            for step in range(2):
                crops = torch.rand(1, 1, 2 * size, 2 * size, 2 * size, device=ctx.device)
                g = torch.Generator(device=ctx.device).manual_seed(step)
                with torch.autocast(device_type=ctx.device, dtype=dtype):
                    loss = model(crops, generator=g)["loss"]
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
                grads_finite &= all(bool(torch.isfinite(p.grad).all()) for p in model.parameters() if p.grad is not None)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                losses.append(float(loss.detach()))
            key = f"{backbone}:{precision}"
            results[key] = {"losses": losses, "grads_finite": grads_finite}
            if not (grads_finite and all(math.isfinite(v) for v in losses)):
                bad.append(key)
    if bad:
        raise RuntimeError(f"non-finite loss or gradients: {', '.join(bad)} ({json.dumps(results)})")
    return results


def _pretrain(ctx: Context, run_name: str, prefix: List[str], extra: List[str]) -> Dict:
    from mim_nnunet.pretrain.logbook import read_records
    cmd = prefix + [command("mim_pretrain"), "-d", str(ctx.scans()), "-data_name", "gpucheck",
                    "-size", "tiny", "-np", "2",
                    "-device", ctx.device, "-input_size", "64", "-batch", "1", "-accum", "1", "-steps", "4",
                    "-workers", "1", "-run", run_name, "-val_crops", "2"] + extra
    started = time.perf_counter()
    run(cmd, ctx.env, 900)
    out = Path(ctx.env["nnUNet_results"]) / "MiM_gpucheck" / f"hybrid_tiny_{run_name}"
    steps = [r for r in read_records(out / "log.jsonl") if "loss" in r and r.get("kind", "train") == "train"]
    export = out / "export" / "mim_hybrid_tiny.safetensors"
    if not export.is_file():
        raise RuntimeError(f"no export at {export}")
    return {"seconds": round(time.perf_counter() - started, 1), "steps": len(steps),
            "last_loss": steps[-1]["loss"] if steps else None,
            "subvolumes_per_s": steps[-1].get("subvolumes_per_s") if steps else None, "export": str(export)}


def check_pretrain_1gpu(ctx: Context) -> Dict:
    return _pretrain(ctx, "gpu1", [], ["-num_gpus", "1"])


def check_pretrain_torchrun(ctx: Context) -> Dict:
    return _pretrain(ctx, "torchrun", [command("torchrun"), "--standalone", "--nproc_per_node", "1"], [])


def check_pretrain_compile(ctx: Context) -> Dict:
    return _pretrain(ctx, "compile", [], ["-num_gpus", "1", "--compile"])


def _benchmark(ctx: Context, name: str, extra: List[str]) -> List[Dict]:
    """Rows of one scripts/benchmark_pretrain_step.py invocation (its ``--json`` file)."""
    rows_file = Path(ctx.args.out) / f"benchmark_{name}.json"
    rows_file.unlink(missing_ok=True)
    cmd = [sys.executable, str(REPO / "scripts" / "benchmark_pretrain_step.py"), "-input_size",
           str(ctx.args.benchmark_input_size), "-repeats", "2", "-json", str(rows_file)] + extra
    result = subprocess.run(cmd, env=ctx.env, capture_output=True, encoding="utf-8", errors="replace", timeout=1200)
    if not rows_file.is_file():
        raise RuntimeError(f"benchmark {name} wrote no rows (exit {result.returncode}): {result.stderr[-500:]}")
    return json.loads(rows_file.read_text(encoding="utf-8"))


def check_benchmark(ctx: Context) -> Dict:
    """Every configuration in one shot (fp32 and bf16, fused AdamW timed), then each lever of the step
    alone on ``--lever_config`` in bf16 (the engine's GPU precision), to compare with its one-shot row."""
    ctx.benchmark_rows = _benchmark(ctx, "configs", ["-configs", ctx.args.benchmark_configs, "-chunks", "0",
                                                     "-optimizer", "fused"])
    levers = {}
    for lever in (v for v in ctx.args.levers.split(",") if v):
        levers[lever] = _benchmark(ctx, lever, ["-configs", ctx.args.lever_config, "-dtypes", ctx.args.lever_dtype]
                                   + LEVERS[lever])
    failed = [r for r in ctx.benchmark_rows + [r for rows in levers.values() for r in rows] if "error" in r]
    if failed:
        raise RuntimeError(f"benchmark: {len(failed)} configuration(s) failed: {[r.get('error') for r in failed]}")
    return {"rows": ctx.benchmark_rows, "levers": levers}


def check_planner_memory(ctx: Context) -> Dict:
    """The planner's modelled step memory next to each measured peak (same backbone, size, S, chunk, dtype)."""
    from mim_nnunet.data.planner import (
        BF16_FRACTION_OF_FP32,
        STEP_MEMORY_FP32_AT_96,
        step_memory_gb,
    )
    rows = [r for r in ctx.benchmark_rows if r.get("dtype") in ("bf16", "fp32") and "peak_memory_mb" in r]
    if not rows:
        raise RuntimeError("no benchmark rows to compare (run the benchmark check first)")
    table = {}
    for r in rows:
        key = f"{r['backbone']}:{r['size']}:{r['dtype']}:S{r['input_size']}:chunk{r.get('chunk', 0)}"
        if (r["backbone"], r["size"]) not in STEP_MEMORY_FP32_AT_96:
            table[key] = {"measured_gb": round(r["peak_memory_mb"] / 1024, 2), "modelled_gb": None}
            continue
        modelled = step_memory_gb(r["backbone"], r["size"], [r["input_size"]] * 3, 1, r.get("chunk", 0),
                                  fraction=BF16_FRACTION_OF_FP32 if r["dtype"] == "bf16" else 1.0)
        table[key] = {"measured_gb": round(r["peak_memory_mb"] / 1024, 2), "modelled_gb": round(modelled, 2),
                      "measured_over_modelled": round(r["peak_memory_mb"] / 1024 / modelled, 3),
                      "kind": r.get("peak_memory_kind"),
                      "source": STEP_MEMORY_FP32_AT_96[(r["backbone"], r["size"])]["source"]}
    return {"per_crop": table}


def check_nnunet_finetune(ctx: Context) -> Dict:
    raw = Path(ctx.env["nnUNet_raw"]) / f"Dataset{DATASET_ID}_GpuCheck"
    if not raw.is_dir():
        write_volumes(raw, 5, (96, 96, 96), labels=True)
    env = dict(ctx.env)
    run([command("nnUNetv2_plan_and_preprocess"), "-d", str(DATASET_ID), "-c", "3d_fullres", "-np", "4"], env, 900)
    run([command("mim_pretrain"), "-d", str(ctx.scans()), "-data_name", "gpucheck",
         "-size", "base", "-np", "2", "-device",
         ctx.device, "-input_size", "64", "-batch", "1", "-accum", "1", "-steps", "2", "-workers", "1",
         "-val_crops", "1"], env, 900)
    env["MIM_PRETRAINED_WEIGHTS"] = str(Path(env["nnUNet_results"]) / "MiM_gpucheck" / "hybrid_base" / "export"
                                        / "mim_hybrid_base.safetensors")
    started = time.perf_counter()
    run([command("nnUNetv2_train"), str(DATASET_ID), "3d_fullres", "0", "-tr", FINETUNE_TRAINER, "-device",
         ctx.device], env, 1200)
    fold = Path(env["nnUNet_results"]) / raw.name / f"{FINETUNE_TRAINER}__nnUNetPlans__3d_fullres" / "fold_0"
    log = "".join(p.read_text(encoding="utf-8") for p in fold.glob("training_log_*.txt"))
    report = json.loads((fold / "mim_transfer.json").read_text(encoding="utf-8"))
    return {"seconds": round(time.perf_counter() - started, 1), "compiled": "Using torch.compile" in log,
            "encoder_fraction": report["encoder_fraction"],
            "epoch_seconds": [float(line.split("Epoch time:")[1].split("s")[0]) for line in log.splitlines()
                              if "Epoch time:" in line]}


RUNNERS: Dict[str, Callable[[Context], Dict]] = {name: globals()[f"check_{name}"] for name in CHECKS}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="gpu_check", help="folder for the summary and the work files")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--checks", default=",".join(CHECKS), help="comma-separated (default: all)")
    parser.add_argument("--backbones", default="hybrid,swin,resenc", help="for precision_steps")
    parser.add_argument("--precisions", default="bf16,fp16", help="for precision_steps")
    parser.add_argument("--precision_input_size", type=int, default=64, help="S of precision_steps (default: 64)")
    parser.add_argument("--benchmark_configs", default=BENCHMARK_CONFIGS)
    parser.add_argument("--benchmark_input_size", type=int, default=96)
    parser.add_argument("--levers", default=",".join(LEVERS), help="step levers to benchmark (default: all)")
    parser.add_argument("--lever_config", default="hybrid:base", help="backbone:size the levers run on")
    parser.add_argument("--lever_dtype", default="bf16", help="the levers' dtype (default: bf16)")
    args = parser.parse_args(argv)
    from mim_nnunet.common.atomic import write_json_atomic
    chosen = [c.strip() for c in args.checks.split(",") if c.strip()]
    unknown = sorted(set(chosen) - set(CHECKS))
    if unknown:
        parser.error(f"unknown checks {unknown}; choose from {', '.join(CHECKS)}")
    unknown = sorted({v for v in args.levers.split(",") if v} - set(LEVERS))
    if unknown:       # before any check runs, not minutes into the benchmark
        parser.error(f"unknown levers {unknown}; choose from {', '.join(LEVERS)}")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = {"started": time.strftime("%Y-%m-%dT%H:%M:%S"), "device": args.device, "checks": {}}
    import torch
    if args.device == "cuda" and not torch.cuda.is_available():
        summary["checks"] = {c: {"status": "skipped", "why": "no CUDA device"} for c in chosen}
        write_json_atomic(out / SUMMARY, summary)
        print(f"no CUDA device: nothing checked ({out / SUMMARY})")
        return 2
    ctx = Context(args)
    started = time.perf_counter()
    for name in chosen:
        t = time.perf_counter()
        print(f"[gpu_check] {name} ...", flush=True)
        try:
            details = RUNNERS[name](ctx)
            entry = {"status": "ok", **details}
        except Exception as exc:     # every check runs; the summary says what failed and where
            entry = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"[:2000],
                     "where": traceback.format_exc().strip().splitlines()[-3:]}
        entry["check_seconds"] = round(time.perf_counter() - t, 1)
        summary["checks"][name] = entry
        summary["total_seconds"] = round(time.perf_counter() - started, 1)
        write_json_atomic(out / SUMMARY, summary)
        print(f"[gpu_check] {name}: {entry['status']} ({entry['check_seconds']} s)", flush=True)
    summary["all_ok"] = all(e["status"] == "ok" for e in summary["checks"].values())
    write_json_atomic(out / SUMMARY, summary)
    print(f"summary: {out / SUMMARY}")
    return 0 if summary["all_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
