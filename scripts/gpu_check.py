#!/usr/bin/env python
"""The GPU path, checked on a bare offline CUDA machine whose python3 has torch: with ``-kit DIR`` (written
by ``scripts/gpu_kit.sh``) the kit's wheels are installed offline beside the machine's own torch first.
Every check runs, failed or not; ``-out`` gets ``gpu_check_summary.json`` and ``gpu_check_summary.md``,
rewritten after each check, also when the setup fails. A rerun with the same ``-out`` starts each check
afresh.

Command A (``-command A``):
  environment        torch, CUDA device, versions
  precision_steps    two engine steps (fused AdamW) of MiM tiny per backbone in bf16 and in fp16 with the
                     loss scaler; a step the scaler skips (inf/NaN gradients) is counted as skipped
  pretrain_1gpu      mim_pretrain -gpus 1, a few steps, export written
  pretrain_torchrun  the same through torchrun --nproc_per_node 1 (NCCL on CUDA: the engine's collectives run)
  pretrain_compile   --compile with -chunk 2; recompiles and graph breaks counted from TORCH_LOGS
  pretrain_resume    -stop_at 2, then --c to the end
Command B (``-command B``):
  environment
  benchmark          scripts/benchmark_pretrain_step.py: s per crop, TFLOP/s, MFU (peak from the GPU's name),
                     then each lever alone on hybrid base in bf16
  planner_memory     the plan's modelled step memory vs torch.cuda.max_memory_reserved at the plan's own batch
  nnunet_finetune    nnUNetv2_train (1 epoch) + nnUNetv2_predict with each MiM trainer and its scratch twin

``-device cpu --reduced`` runs command A on the CPU with tiny sizes (the kit's dry run). Exit status: 0 every
check held or was skipped for a stated reason, 1 a check or the setup failed, 2 no CUDA device.

    python3 scripts/gpu_check.py -command A -kit gpu_kit -out gpu_check
    python3 scripts/gpu_check.py -command A -device cpu --reduced -out /tmp/gpu_check
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Callable, Dict, List, Optional

REPO = Path(__file__).resolve().parents[1]
COMMANDS = {"A": ("environment", "precision_steps", "pretrain_1gpu", "pretrain_torchrun", "pretrain_compile",
                  "pretrain_resume"),
            "B": ("environment", "benchmark", "planner_memory", "nnunet_finetune")}
CHECKS = tuple(dict.fromkeys(c for cmd in COMMANDS.values() for c in cmd))
SUMMARY = "gpu_check_summary.json"
TABLE = "gpu_check_summary.md"
BENCHMARK_CONFIGS = "hybrid:base,hybrid:tiny,swin:base,resenc:M,resenc:L"
# Each MiM trainer and its scratch twin (1 epoch of 2 + 1 iterations), the export each needs
FINETUNE_PAIRS = (("nnUNetTrainerMiM_1epoch", "nnUNetTrainerMiMScratch_1epoch", "hybrid", "base"),
                  ("nnUNetTrainerMiMSwinUNETR_tiny_1epoch", "nnUNetTrainerSwinUNETR_fs12_1epoch", "swin", "tiny"))
LEVERS = {"chunk4": ["-chunks", "4"], "checkpointing": ["--checkpointing"], "channels_last": ["--channels_last"],
          "unfused_adamw": ["-optimizer", "adamw"], "compile": ["--compile"]}
# Dense peak TFLOP/s by GPU name (vendor data sheets), for the MFU
PEAK_TFLOPS = {"H200": {"bf16": 989.0, "fp32": 67.0}, "H100": {"bf16": 989.0, "fp32": 67.0},
               "A100": {"bf16": 312.0, "fp32": 19.5}, "L40S": {"bf16": 362.0, "fp32": 91.6}}
DATASET_ID = 990
TORCH_LOGS = "recompiles,graph_breaks"


# ---------------------------------------------------------------------------------------------------------
# Summary: written with the standard library alone, so that a failed install still leaves one

def write_json(path: Path, data: Dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def markdown(summary: Dict) -> str:
    """The summary as a table: check, status, seconds, the gist."""
    lines = [f"GPU check {summary.get('command', '')} on {summary.get('device')}, started {summary.get('started')}",
             "", "| check | status | s | details |", "|---|---|---|---|"]
    setup = summary.get("setup", {})
    lines.append(f"| setup | {setup.get('status', '?')} | {setup.get('seconds', '')} | "
                 f"{setup.get('error', '') or setup.get('torch', '')} |")
    for name, entry in summary["checks"].items():
        gist = entry.get("error") or entry.get("why") or ", ".join(
            f"{k}={v}" for k, v in entry.items() if k not in ("status", "check_seconds")
            and isinstance(v, (int, float, str, bool)))
        lines.append(f"| {name} | {entry['status']} | {entry.get('check_seconds', '')} | "
                     f"{str(gist).replace('|', '/')[:300]} |")
    return "\n".join(lines) + "\n"


def save(out: Path, summary: Dict) -> None:
    write_json(out / SUMMARY, summary)
    (out / TABLE).write_text(markdown(summary), encoding="utf-8")


def parse_torch_logs(text: str) -> Dict[str, int]:
    """Recompiles and graph breaks that ``TORCH_LOGS=recompiles,graph_breaks`` reported in ``text``, and how
    often dynamo hit its recompile limit (after which the function runs eagerly)."""
    recompiles = sum(1 for line in text.splitlines() if "Recompiling function" in line)
    breaks = sum(1 for line in text.splitlines() if re.search(r"\bGraph break\b", line))
    limit = sum(1 for line in text.splitlines() if re.search(r"hit config\.(recompile|cache_size)_limit", line))
    return {"recompiles": recompiles, "graph_breaks": breaks, "recompile_limit_hit": limit}


# ---------------------------------------------------------------------------------------------------------

class Skipped(Exception):
    """A check that could not apply here (the reason is its message): reported as skipped, not failed."""


def command(ctx: "Context", name: str) -> str:
    """A console script: the kit's, next to this Python, else from PATH."""
    for folder in ([ctx.site / "bin"] if ctx.site else []) + [Path(sys.executable).parent]:
        if (folder / name).exists():
            return str(folder / name)
    return shutil.which(name) or name


def run(cmd: List, env: Dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    result = subprocess.run([str(c) for c in cmd], env=env, capture_output=True, encoding="utf-8", errors="replace",
                            timeout=timeout)
    if result.returncode != 0:
        tail = (result.stderr.strip() or result.stdout.strip()).splitlines()[-5:]
        raise RuntimeError(f"{Path(str(cmd[0])).name} exited {result.returncode}: " + " | ".join(tail))
    return result


def install_kit(kit: Path, site: Path) -> Dict:
    """The kit's wheels into ``site``, offline, no dependency resolution (the target's torch stays)."""
    wheels = sorted(kit.glob("*.whl"))
    if not wheels:
        raise RuntimeError(f"{kit}: no wheels (write the kit with scripts/gpu_kit.sh)")
    shutil.rmtree(site, ignore_errors=True)
    run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--no-cache-dir",
         "--target", site, *wheels], dict(os.environ), 900)
    return {"wheels": len(wheels), "kit": str(kit)}


class Context:
    def __init__(self, args: argparse.Namespace, site: Optional[Path]):
        self.args = args
        self.device = args.device
        self.site = site
        self.out = Path(args.out)
        env = dict(os.environ)
        if site:
            env["PYTHONPATH"] = os.pathsep.join([str(site)] + [p for p in [env.get("PYTHONPATH")] if p])
            env["PATH"] = os.pathsep.join([str(site / "bin"), env.get("PATH", "")])
            trainers = site / "share" / "mim_nnunet" / "trainers"
        else:
            trainers = Path(run([command(self, "mim_nnunet"), "trainers-path"], env, 120).stdout.strip())
        if not (trainers / "nnUNetTrainerMiM.py").is_file():
            raise RuntimeError(f"no trainers folder at {trainers}")
        env["nnUNet_extTrainer"] = str(trainers)
        self.base_env = env
        self.benchmark_rows: List[Dict] = []

    def work(self, name: str) -> Path:
        """The check's own folder, emptied: a rerun with the same -out starts the check afresh."""
        folder = self.out / "work" / name
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        return folder

    def env(self, work: Path) -> Dict[str, str]:
        return {**self.base_env, "nnUNet_raw": str(work / "raw"), "nnUNet_preprocessed": str(work / "preprocessed"),
                "nnUNet_results": str(work / "results")}

    def scans(self) -> Path:
        """A folder of four CT-like volumes (air, a body, an organ, bone), written once per -out."""
        folder = self.out / "work" / "scans"
        if not (folder / "s3.nii.gz").is_file():
            shape = (48, 64, 64) if self.args.reduced else (80, 96, 96)
            write_volumes(folder, 4, shape, labels=False)
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
        write_json(folder / "dataset.json", {
            "channel_names": {"0": "CT"}, "labels": {"background": 0, "organ": 1}, "numTraining": n,
            "file_ending": ".nii.gz", "name": folder.name})


# ---------------------------------------------------------------------------------------------------------
# The checks: each returns its details (a dict); Skipped marks it skipped, any other exception failed.

def check_environment(ctx: Context) -> Dict:
    from importlib.metadata import version

    import torch
    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda_build": torch.version.cuda,
            "cuda_available": torch.cuda.is_available(), "nnunetv2": version("nnunetv2"),
            "mim_nnunet": version("mim-nnunet"), "monai": version("monai"),
            "torch_from": str(Path(torch.__file__).parent)}
    from mim_nnunet.common.host import probe_host
    info["host"] = probe_host().as_dict()     # CPU model and capability, threads, GPU, matmul GFLOP/s
    if ctx.device == "cuda":
        p = torch.cuda.get_device_properties(0)
        info.update({"gpu": p.name, "gpu_memory_gb": round(p.total_memory / 2 ** 30, 1),
                     "gpu_count": torch.cuda.device_count(), "bf16_supported": torch.cuda.is_bf16_supported(),
                     "capability": ".".join(map(str, torch.cuda.get_device_capability(0))),
                     "nccl": torch.distributed.is_nccl_available()})
    return info


def engine_steps(ctx: Context, backbone: str, precision: str, steps: int = 2,
                 init_scale: Optional[float] = None) -> Dict:
    """``steps`` optimiser steps of the pre-training engine (its fused AdamW, its scaler: ``init_scale`` replaces
    its starting scale) on random crops."""
    import torch

    from mim_nnunet.backbones import backbone_sizes
    from mim_nnunet.mim import MiMConfig
    from mim_nnunet.pretrain import engine
    from mim_nnunet.pretrain.settings import RunSettings

    # resenc's deepest stage needs S >= 64 to train (instance norm over more than one voxel)
    size = max(ctx.args.precision_input_size, 64) if backbone == "resenc" else ctx.args.precision_input_size
    work = ctx.work(f"precision_{backbone}_{precision}")
    settings = RunSettings(name="gpucheck", backbone=backbone, size="tiny", out_dir=str(work), store=str(work),
                           mim=MiMConfig(input_size=(size,) * 3).to_dict(),
                           backbone_sizes=backbone_sizes(backbone, "tiny"), per_device_batch=1, accumulation=1,
                           world_size=1, steps=steps, warmup_steps=0, lr=1e-4, device=ctx.device,
                           precision=precision)
    device = torch.device(ctx.device)
    trainee = engine.build(settings, device)
    if init_scale is not None:
        trainee.scaler = torch.amp.GradScaler(ctx.device, init_scale=init_scale, enabled=precision == "fp16")
    crops = iter([torch.rand(1, 1, 2 * size, 2 * size, 2 * size) for _ in range(steps)])
    records, skipped = [], 0
    for step in range(steps):
        scale = trainee.scaler.get_scale() if trainee.scaler.is_enabled() else None
        record, _, _ = engine.train_step(trainee, crops, step, settings, 0, 1, device)
        # the scaler lowers its scale exactly when it skipped the step (inf/NaN gradients)
        if scale is not None and trainee.scaler.get_scale() < scale:
            skipped += 1
        records.append({"loss": round(record["loss"], 5), "grad_norm": record["grad_norm"]})
    fused = any(g.get("fused") for g in trainee.optimizer.param_groups) or bool(trainee.optimizer.defaults.get("fused"))
    return {"steps": records, "skipped_by_scaler": skipped, "fused_adamw": fused}


def check_precision_steps(ctx: Context) -> Dict:
    """bf16 and fp16 (with its scaler) through the engine per backbone; on the CPU the engine trains fp32."""
    precisions = ctx.args.precisions.split(",") if ctx.device == "cuda" else ["fp32"]
    results, bad, skipped = {}, [], 0
    for backbone in ctx.args.backbones.split(","):
        for precision in precisions:
            key = f"{backbone}:{precision}"
            try:
                results[key] = engine_steps(ctx, backbone, precision)
            except Exception as exc:       # one failing pair does not hide the others
                results[key] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
                bad.append(key)
                continue
            skipped += results[key]["skipped_by_scaler"]
            if not results[key]["fused_adamw"]:
                bad.append(f"{key} (AdamW not fused)")
    if bad:
        raise RuntimeError(f"failed: {', '.join(bad)} ({json.dumps(results)[:1500]})")
    return {"pairs": results, "steps_skipped_by_scaler": skipped}


def pretrain(ctx: Context, work: Path, run_name: str, prefix: List[str], extra: List[str],
             env_extra: Optional[Dict[str, str]] = None, steps: int = 4, finishes: bool = True) -> Dict:
    """mim_pretrain (hybrid tiny) on the generated scans; its log's train records and, when the run ``finishes``
    (not stopped early by ``-stop_at``), its export."""
    from mim_nnunet.pretrain.logbook import read_records
    env = {**ctx.env(work), **(env_extra or {})}
    size = "32" if ctx.args.reduced else "64"
    launch = prefix + ["-m", "mim_nnunet.cli.pretrain"] if prefix else [sys.executable, "-m", "mim_nnunet.cli.pretrain"]
    cmd = launch + ["-d", str(ctx.scans()), "-data_name", "gpucheck", "-size", "tiny",
                    "-np", "1" if ctx.args.reduced else "2", "-device", ctx.device,
                    "-input_size", size, "-batch", "1", "-accum", "1", "-steps", str(steps), "-run", run_name,
                    # reduced (the CPU dry run): preprocessing in the process, no loader process, no validation
                    "-workers", "0" if ctx.args.reduced else "1", "-val_crops", "0" if ctx.args.reduced else "1"] \
        + extra
    started = time.perf_counter()
    result = run(cmd, env, 900)
    out = Path(env["nnUNet_results"]) / "MiM_gpucheck" / f"hybrid_tiny_{run_name}"
    records = [r for r in read_records(out / "log.jsonl") if "loss" in r and r.get("kind", "train") == "train"]
    export = out / "export" / "mim_hybrid_tiny.safetensors"
    if finishes != export.is_file():
        raise RuntimeError(f"no export at {export}" if finishes else f"an export at {export} before the last step")
    return {"seconds": round(time.perf_counter() - started, 1), "last_step": records[-1]["step"] if records else 0,
            "last_loss": records[-1]["loss"] if records else None,
            "subvolumes_per_s": records[-1].get("subvolumes_per_s") if records else None,
            "_output": result.stdout + result.stderr}


def check_pretrain_1gpu(ctx: Context) -> Dict:
    details = pretrain(ctx, ctx.work("pretrain_1gpu"), "gpu1", [], ["-num_gpus", "1"])
    details.pop("_output")
    return details


def check_pretrain_torchrun(ctx: Context) -> Dict:
    torchrun = [command(ctx, "torchrun"), "--standalone", "--nproc_per_node", "1"]
    if not Path(torchrun[0]).exists() and not shutil.which(torchrun[0]):
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1"]
    details = pretrain(ctx, ctx.work("pretrain_torchrun"), "torchrun", torchrun, [])
    details.pop("_output")
    details["backend"] = "nccl" if ctx.device == "cuda" else "gloo"
    return details


def check_pretrain_compile(ctx: Context) -> Dict:
    details = pretrain(ctx, ctx.work("pretrain_compile"), "compile", [], ["-num_gpus", "1", "--compile", "-chunk", "2"],
                       {"TORCH_LOGS": TORCH_LOGS})
    output = details.pop("_output")
    details.update(parse_torch_logs(output))
    if details["recompile_limit_hit"]:
        raise RuntimeError(f"dynamo hit its recompile limit: parts ran eagerly ({details})")
    return details


def check_pretrain_resume(ctx: Context) -> Dict:
    work = ctx.work("pretrain_resume")
    first = pretrain(ctx, work, "resume", [], ["-num_gpus", "1", "-stop_at", "2"], finishes=False)
    second = pretrain(ctx, work, "resume", [], ["-num_gpus", "1", "--c"])
    if (first["last_step"], second["last_step"]) != (2, 4):
        raise RuntimeError(f"steps {first['last_step']} then {second['last_step']}, expected 2 then 4")
    return {"stopped_at": first["last_step"], "resumed_to": second["last_step"], "last_loss": second["last_loss"],
            "seconds": round(first["seconds"] + second["seconds"], 1)}


def peak_tflops(dtype: str) -> float:
    import torch
    if not torch.cuda.is_available():
        return 0.0
    name = torch.cuda.get_device_name(0)
    return next((table.get(dtype, 0.0) for key, table in PEAK_TFLOPS.items() if key in name), 0.0)


def _benchmark(ctx: Context, name: str, extra: List[str], dtype: str = "bf16") -> List[Dict]:
    """Rows of one scripts/benchmark_pretrain_step.py invocation (its ``--json`` file)."""
    rows_file = ctx.out / f"benchmark_{name}.json"
    rows_file.unlink(missing_ok=True)
    cmd = [sys.executable, str(REPO / "scripts" / "benchmark_pretrain_step.py"), "-input_size",
           str(ctx.args.benchmark_input_size), "-repeats", "2", "-json", str(rows_file),
           "-peak_tflops", str(peak_tflops(dtype))] + extra
    result = subprocess.run(cmd, env=ctx.base_env, capture_output=True, encoding="utf-8", errors="replace",
                            timeout=1200)
    if not rows_file.is_file():
        raise RuntimeError(f"benchmark {name} wrote no rows (exit {result.returncode}): {result.stderr[-500:]}")
    return json.loads(rows_file.read_text(encoding="utf-8"))


def check_benchmark(ctx: Context) -> Dict:
    """Every configuration in bf16 one shot (fused AdamW timed), then each lever alone on ``-lever_config``."""
    ctx.benchmark_rows = _benchmark(ctx, "configs", ["-configs", ctx.args.benchmark_configs, "-chunks", "0",
                                                     "-optimizer", "fused", "-dtypes", ctx.args.lever_dtype],
                                    ctx.args.lever_dtype)
    levers = {}
    for lever in (v for v in ctx.args.levers.split(",") if v):
        levers[lever] = _benchmark(ctx, lever, ["-configs", ctx.args.lever_config, "-dtypes", ctx.args.lever_dtype]
                                   + LEVERS[lever], ctx.args.lever_dtype)
    failed = [r for r in ctx.benchmark_rows + [r for rows in levers.values() for r in rows] if "error" in r]
    if failed:
        raise RuntimeError(f"benchmark: {len(failed)} configuration(s) failed: {[r.get('error') for r in failed]}")
    return {"rows": ctx.benchmark_rows, "levers": levers}


def check_planner_memory(ctx: Context) -> Dict:
    """The plan's per-device batch and chunk for one device (hybrid base), one engine step at exactly that, and
    ``torch.cuda.max_memory_reserved`` next to the planner's modelled step memory."""
    import torch

    if ctx.device != "cuda":
        raise Skipped("needs CUDA (max_memory_reserved)")
    from mim_nnunet.data.pipeline import prepare
    from mim_nnunet.data.planner import BF16_FRACTION_OF_FP32, memory_target_for, step_memory_gb
    from mim_nnunet.pretrain import engine
    from mim_nnunet.pretrain.settings import RunSettings

    work = ctx.work("planner_memory")
    os.environ.update({k: v for k, v in ctx.env(work).items() if k.startswith("nnUNet_")})
    prepared = prepare([str(ctx.scans())], name="gpucheck", backbone="hybrid", size="base",
                       gpu_memory_target_gb=memory_target_for("cuda", 1, None), num_processes=2)
    plan = prepared.plan
    split = plan["batch_by_device_count"]["1"]
    batch, chunk = split["per_device_batch"], split.get("chunk", 0)
    s = list(plan["input_size"]) if "input_size" in plan else [96, 96, 96]
    from mim_nnunet.mim import MiMConfig
    settings = RunSettings(name="gpucheck", backbone="hybrid", size="base", out_dir=str(work), store=str(work),
                           mim=MiMConfig(input_size=tuple(s)).to_dict(), backbone_sizes=plan["backbone_sizes"],
                           per_device_batch=batch, accumulation=1, world_size=1, steps=2, warmup_steps=0, lr=1e-4,
                           device="cuda", precision="bf16", chunk=chunk)
    device = torch.device("cuda")
    torch.cuda.reset_peak_memory_stats()
    trainee = engine.build(settings, device)
    crops = iter([torch.rand(batch, 1, *[2 * v for v in s]) for _ in range(2)])
    for step in range(2):
        engine.train_step(trainee, crops, step, settings, 0, 1, device)
    torch.cuda.synchronize()
    reserved = torch.cuda.max_memory_reserved() / 1e9
    modelled = step_memory_gb("hybrid", "base", s, batch, chunk, fraction=BF16_FRACTION_OF_FP32)
    return {"input_size": s, "per_device_batch": batch, "chunk": chunk, "modelled_gb": round(modelled, 2),
            "max_memory_reserved_gb": round(reserved, 2),
            "max_memory_allocated_gb": round(torch.cuda.max_memory_allocated() / 1e9, 2),
            "reserved_over_modelled": round(reserved / modelled, 3) if modelled else None}


def check_nnunet_finetune(ctx: Context) -> Dict:
    """For each pair: an export, then nnUNetv2_train 1 epoch and nnUNetv2_predict with the MiM trainer and its
    scratch twin on a 5-case labelled dataset."""
    work = ctx.work("nnunet_finetune")
    env = ctx.env(work)
    raw = Path(env["nnUNet_raw"]) / f"Dataset{DATASET_ID}_GpuCheck"
    write_volumes(raw, 5, (96, 96, 96), labels=True)
    run([command(ctx, "nnUNetv2_plan_and_preprocess"), "-d", DATASET_ID, "-c", "3d_fullres", "-np", "4"], env, 900)
    results, bad = {}, []
    for mim_trainer, scratch, backbone, size in FINETUNE_PAIRS:
        try:
            run([sys.executable, "-m", "mim_nnunet.cli.pretrain", "-d", str(ctx.scans()), "-data_name", "gpucheck",
                 "-backbone", backbone, "-size", size, "-np", "2", "-device", ctx.device, "-input_size", "64",
                 "-batch", "1", "-accum", "1", "-steps", "2", "-workers", "1", "-val_crops", "1"], env, 900)
        except Exception as exc:
            results[f"{backbone}_{size}_export"] = {"error": str(exc)[:500]}
            bad.append(f"{backbone} export")
            continue
        export = Path(env["nnUNet_results"]) / "MiM_gpucheck" / f"{backbone}_{size}" / "export" / \
            f"mim_{backbone}_{size}.safetensors"
        for trainer in (mim_trainer, scratch):
            t = time.perf_counter()
            try:
                run_env = {**env, "MIM_PRETRAINED_WEIGHTS": str(export)}
                run([command(ctx, "nnUNetv2_train"), DATASET_ID, "3d_fullres", "0", "-tr", trainer, "-device",
                     ctx.device], run_env, 1200)
                pred = work / f"pred_{trainer}"
                run([command(ctx, "nnUNetv2_predict"), "-i", raw / "imagesTr", "-o", pred, "-d", DATASET_ID, "-c",
                     "3d_fullres", "-f", "0", "-tr", trainer, "-device", ctx.device, "--disable_tta", "-npp", "1",
                     "-nps", "1"], run_env, 900)
                fold = Path(env["nnUNet_results"]) / raw.name / f"{trainer}__nnUNetPlans__3d_fullres" / "fold_0"
                log = "".join(p.read_text(encoding="utf-8") for p in fold.glob("training_log_*.txt"))
                report = fold / "mim_transfer.json"
                results[trainer] = {
                    "seconds": round(time.perf_counter() - t, 1), "compiled": "Using torch.compile" in log,
                    "predicted": len(list(pred.glob("*.nii.gz"))),
                    "encoder_fraction": json.loads(report.read_text(encoding="utf-8")).get("encoder_fraction")
                    if report.is_file() else None}
            except Exception as exc:
                results[trainer] = {"error": f"{type(exc).__name__}: {exc}"[:800]}
                bad.append(trainer)
    if bad:
        raise RuntimeError(f"failed: {', '.join(bad)} ({json.dumps(results)[:1500]})")
    return {"trainers": results}


RUNNERS: Dict[str, Callable[[Context], Dict]] = {name: globals()[f"check_{name}"] for name in CHECKS}


def run_checks(ctx: Context, chosen: List[str], summary: Dict, out: Path) -> None:
    started = time.perf_counter()
    for name in chosen:
        t = time.perf_counter()
        print(f"[gpu_check] {name} ...", flush=True)
        try:
            entry = {"status": "ok", **RUNNERS[name](ctx)}
        except Skipped as why:
            entry = {"status": "skipped", "why": str(why)}
        except Exception as exc:     # every check runs; the summary says what failed and where
            entry = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"[:2000],
                     "where": traceback.format_exc().strip().splitlines()[-3:]}
        entry["check_seconds"] = round(time.perf_counter() - t, 1)
        summary["checks"][name] = entry
        summary["total_seconds"] = round(time.perf_counter() - started, 1)
        save(out, summary)
        print(f"[gpu_check] {name}: {entry['status']} ({entry['check_seconds']} s)", flush=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-out", default="gpu_check", help="folder for the summary and the work files")
    parser.add_argument("-command", choices=sorted(COMMANDS), default="A")
    parser.add_argument("-kit", default=None, help="kit folder of scripts/gpu_kit.sh: its <command>/ wheels are "
                                                   "installed offline under <out>/site first")
    parser.add_argument("-device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("-checks", default=None, help="comma-separated subset of the command's checks")
    parser.add_argument("--reduced", action="store_true", help="tiny sizes (the CPU dry run of the kit)")
    parser.add_argument("-backbones", default="hybrid,swin,resenc", help="for precision_steps")
    parser.add_argument("-precisions", default="bf16,fp16", help="for precision_steps on CUDA")
    parser.add_argument("-precision_input_size", type=int, default=None, help="S of precision_steps (64; 32 reduced)")
    parser.add_argument("-benchmark_configs", default=BENCHMARK_CONFIGS)
    parser.add_argument("-benchmark_input_size", type=int, default=96)
    parser.add_argument("-levers", default=",".join(LEVERS), help="step levers to benchmark (default: all)")
    parser.add_argument("-lever_config", default="hybrid:base", help="backbone:size the levers run on")
    parser.add_argument("-lever_dtype", default="bf16", help="the benchmark's dtype (default: bf16)")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    chosen = [c.strip() for c in (args.checks or ",".join(COMMANDS[args.command])).split(",") if c.strip()]
    unknown = sorted(set(chosen) - set(CHECKS))
    if unknown:
        parser.error(f"unknown checks {unknown}; choose from {', '.join(CHECKS)}")
    unknown = sorted({v for v in args.levers.split(",") if v} - set(LEVERS))
    if unknown:       # before any check runs, not minutes into the benchmark
        parser.error(f"unknown levers {unknown}; choose from {', '.join(LEVERS)}")
    if args.precision_input_size is None:
        args.precision_input_size = 32 if args.reduced else 64

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    summary = {"started": time.strftime("%Y-%m-%dT%H:%M:%S"), "command": args.command, "device": args.device,
               "reduced": args.reduced, "setup": {}, "checks": {}}
    t = time.perf_counter()
    try:      # the setup: the kit's install, torch, the trainers folder; a failure here still leaves a summary
        site = None
        if args.kit:
            site = out / "site"
            summary["setup"].update(install_kit(Path(args.kit) / args.command, site))
            sys.path.insert(0, str(site))
        import torch
        summary["setup"]["torch"] = torch.__version__
        if args.device == "cuda" and not torch.cuda.is_available():
            summary["setup"].update(status="ok", seconds=round(time.perf_counter() - t, 1))
            summary["checks"] = {c: {"status": "skipped", "why": "no CUDA device"} for c in chosen}
            save(out, summary)
            print(f"no CUDA device: nothing checked ({out / SUMMARY})")
            return 2
        ctx = Context(args, site)
        summary["setup"].update(status="ok", seconds=round(time.perf_counter() - t, 1))
    except Exception as exc:
        summary["setup"].update(status="failed", error=f"{type(exc).__name__}: {exc}"[:2000],
                                seconds=round(time.perf_counter() - t, 1))
        summary["checks"] = {c: {"status": "skipped", "why": "setup failed"} for c in chosen}
        summary["all_ok"] = False
        save(out, summary)
        print(f"setup failed: {summary['setup']['error']}\nsummary: {out / SUMMARY}")
        return 1
    save(out, summary)
    run_checks(ctx, chosen, summary, out)
    summary["all_ok"] = all(e["status"] in ("ok", "skipped") for e in summary["checks"].values())
    save(out, summary)
    print(markdown(summary))
    print(f"summary: {out / SUMMARY}")
    return 0 if summary["all_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
