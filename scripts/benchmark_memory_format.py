#!/usr/bin/env python
"""Which networks train faster channels-last on a CPU: one training iteration (batch 2, cross-entropy, SGD) of
each network our trainers fine-tune, in NCDHW and in NDHWC (``channels_last_3d``), alternating per repeat.
Our trainers keep a network channels-last on the CPU where this pays on both kernel capabilities
(``cpu_channels_last`` in ``mim_nnunet/finetune/trainer.py``; docs/benchmarks.md).

    mim_unetr   MiMUNETR tiny (feature size 12): nnUNetTrainerMiM's CPU variants
    swinunetr   MONAI's SwinUNETR, feature size 12: nnUNetTrainerMiMSwinUNETR's
    resenc      nnU-Net's ResidualEncoderUNet, 32 ... 320 features, 1-3-4-6-6 blocks (ResEnc M's first five
                stages): nnUNetTrainerMiMResEnc's

Prints the host (CPU model, torch's CPU capability, threads, a 2-second matmul probe) and a markdown table;
``-json`` writes the rows. On an AVX2-only host's kernels (any x86 CPU):

    python scripts/benchmark_memory_format.py -threads 1
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 \
        python scripts/benchmark_memory_format.py -threads 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

NETWORKS = ("mim_unetr", "swinunetr", "resenc")
CLASSES = 5


def build(name: str, patch):
    """The network ``name`` for a ``patch`` (z, y, x) and 1 input channel."""
    from torch import nn
    if name == "mim_unetr":
        from mim_nnunet.networks import MiMUNETR
        return MiMUNETR(1, CLASSES, tuple(patch), size="tiny", feature_size=12)
    if name == "swinunetr":
        from monai.networks.nets import SwinUNETR
        return SwinUNETR(in_channels=1, out_channels=CLASSES, feature_size=12)
    from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet
    return ResidualEncoderUNet(1, 5, [32, 64, 128, 256, 320], nn.Conv3d, 3, [1, 2, 2, 2, 2], [1, 3, 4, 6, 6], CLASSES,
                               [1, 1, 1, 1], conv_bias=True, norm_op=nn.InstanceNorm3d,
                               norm_op_kwargs={"eps": 1e-5, "affine": True}, nonlin=nn.LeakyReLU,
                               nonlin_kwargs={"inplace": True}, deep_supervision=False)


def iteration(network, optimizer, x, y) -> float:
    """Seconds of one forward + cross-entropy + backward + SGD step."""
    import torch
    start = time.perf_counter()
    loss = torch.nn.functional.cross_entropy(network(x), y)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def measure(name: str, patch, warmup: int, repeats: int) -> dict:
    """Seconds per iteration in both layouts, the same weights and batch, the layouts alternating."""
    import torch
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 1, *patch, generator=g)
    y = torch.randint(0, CLASSES, (2, *patch), generator=g)
    runs = {}
    for layout, fmt in (("NCDHW", torch.contiguous_format), ("NDHWC", torch.channels_last_3d)):
        torch.manual_seed(0)
        network = build(name, patch).to(memory_format=fmt)
        runs[layout] = (network, torch.optim.SGD(network.parameters(), lr=1e-3, momentum=0.99, nesterov=True), [])
    for i in range(warmup + repeats):
        for layout, (network, optimizer, times) in runs.items():
            seconds = iteration(network, optimizer, x, y)
            if i >= warmup:
                times.append(seconds)
    medians = {layout: statistics.median(times) for layout, (_, _, times) in runs.items()}
    return {"network": name, "patch_zyx": list(patch), "batch": 2,
            **{f"{layout}_seconds": round(m, 4) for layout, m in medians.items()},
            **{f"{layout}_all": [round(t, 4) for t in runs[layout][2]] for layout in runs},
            "ndhwc_over_ncdhw": round(medians["NDHWC"] / medians["NCDHW"], 3)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-networks", default=",".join(NETWORKS), help="comma-separated, of %(default)s")
    parser.add_argument("-patch", type=int, nargs=3, default=(32, 64, 64), metavar=("Z", "Y", "X"),
                        help="training patch (default: %(default)s, the demo's)")
    parser.add_argument("-warmup", type=int, default=1, help="untimed iterations per layout (default: %(default)s)")
    parser.add_argument("-repeats", type=int, default=3, help="timed iterations per layout (default: %(default)s)")
    parser.add_argument("-threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("-json", type=Path, default=None, help="write the host and the rows to this file")
    args = parser.parse_args(argv)
    names = args.networks.split(",")
    if set(names) - set(NETWORKS):
        parser.error(f"-networks: {', '.join(sorted(set(names) - set(NETWORKS)))} not among {', '.join(NETWORKS)}")

    import torch

    from mim_nnunet.common.host import probe_host
    if args.threads:
        torch.set_num_threads(args.threads)
    host = probe_host()
    print(host.line() + "\n", flush=True)
    rows = []
    for name in names:
        rows.append(measure(name, args.patch, args.warmup, args.repeats))
        print(json.dumps(rows[-1]), flush=True)
    print("\n| network | NCDHW s / iteration | NDHWC s / iteration | NDHWC / NCDHW |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['network']} | {r['NCDHW_seconds']} | {r['NDHWC_seconds']} | {r['ndhwc_over_ncdhw']} |")
    if args.json:
        args.json.write_text(json.dumps({"host": host.as_dict(), "rows": rows}, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
