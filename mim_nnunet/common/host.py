"""The host a time was measured on: CPU model, the CPU kernels PyTorch picked, threads, GPU, and a
short fp32 matmul probe (GFLOP/s at the run's threads).

Every time the project states names its host with :func:`probe_host` (the demo's report, the benchmark
scripts, the test runner), so that times from different machines can be compared: the same CPU work
takes about (probe of host A) / (probe of host B) times as long on B as on A. PyTorch picks its CPU
kernels from ``ATEN_CPU_CAPABILITY`` (``default``, ``avx2``, ``avx512``) and oneDNN from
``ONEDNN_MAX_CPU_ISA``; the probe records both variables when they are set, since they change what
an x86 host runs (``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2`` shows what an AVX2-only host
gets; MKL, which runs torch's fp32 matmul and hence the probe, follows ``MKL_ENABLE_INSTRUCTIONS=AVX2``).
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, Optional

# The probe's matrix edge: 2 n^3 = 17.2 GFLOP per product, a few products in two seconds on a 2-core CPU.
PROBE_SIZE = 2048
PROBE_SECONDS = 2.0
# Environment variables that change which CPU kernels run (recorded when set).
# MKL (torch's fp32 matmul on x86, hence the probe) follows MKL_ENABLE_INSTRUCTIONS, not the other two.
KERNEL_ENV_VARS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS", "OMP_NUM_THREADS",
                   "MKL_NUM_THREADS", "OMP_WAIT_POLICY")
# torch's CPU threads per process of our trainings on the CPU (nnUNetv2_train with our trainers, mim_pretrain's CPU
# processes), so that several can share a machine without oversubscribing it: nnUNetv2_train takes a thread per
# core and ignores OMP_NUM_THREADS, and so does mim_pretrain's default (cores left by the loader workers)
THREADS_ENV = "MIM_CPU_THREADS"


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity: what taskset, Slurm or a container's cpuset grant),
    else ``os.cpu_count()``."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:                      # no affinity on this platform
        return os.cpu_count() or 1


def threads_from_environment() -> Optional[int]:
    """``$MIM_CPU_THREADS`` as a positive int (None: not set)."""
    value = os.environ.get(THREADS_ENV)
    if value is None or value == "":
        return None
    if not value.strip().isdigit() or int(value) < 1:
        from .errors import MimError
        raise MimError(f"${THREADS_ENV}={value!r}: not a positive number of threads")
    return int(value)


@dataclass(frozen=True)
class HostProbe:
    """What one host is, and how fast it multiplies fp32 matrices at ``threads`` threads.

    ``matmul_gflops``: 2 n^3 x products / seconds / 1e9 for n x n fp32 matrices (``matmul_size``), timed
    over ``matmul_seconds`` after one untimed product.
    """

    cpu_model: str
    cpu_capability: str
    threads: int
    cpus: int
    gpu: Optional[str]
    matmul_gflops: float
    matmul_size: int
    matmul_products: int
    matmul_seconds: float
    torch: str
    kernel_env: Dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> Dict:
        return asdict(self)

    def line(self) -> str:
        """One line for logs and reports, e.g. ``host: Intel(R) Xeon(R) ... | torch CPU capability AVX2 |
        2 threads of 2 CPUs | fp32 matmul 2048^3: 51.0 GFLOP/s | GPU: none``."""
        env = "".join(f" {k}={v}" for k, v in self.kernel_env.items())
        return (f"host: {self.cpu_model} | torch {self.torch}, CPU capability {self.cpu_capability} | "
                f"{self.threads} thread(s) of {self.cpus} CPU(s) | fp32 matmul {self.matmul_size}^3: "
                f"{self.matmul_gflops:.1f} GFLOP/s | GPU: {self.gpu or 'none'}" + (f" |{env}" if env else ""))


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux; ``platform`` elsewhere; ``unknown`` if neither says)."""
    try:
        for line in cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "cpu model") and value.strip():
                return " ".join(value.split())
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def gpu_name() -> Optional[str]:
    """The first CUDA device's name (with the count when there are several), else None."""
    import torch
    if not torch.cuda.is_available():
        return None
    count = torch.cuda.device_count()
    name = torch.cuda.get_device_name(0)
    return f"{count} x {name}" if count > 1 else name


def matmul_gflops(seconds: float = PROBE_SECONDS, size: int = PROBE_SIZE) -> Dict[str, float]:
    """fp32 ``size`` x ``size`` CPU matmuls for about ``seconds`` at torch's current thread count (one
    untimed product first): ``{"gflops", "products", "seconds"}``."""
    import torch
    g = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=g)
    b = torch.randn(size, size, generator=g)
    out = torch.empty(size, size)
    torch.mm(a, b, out=out)                      # warm-up: thread pool, kernel selection, pages
    products, start = 0, time.perf_counter()
    while True:
        torch.mm(a, b, out=out)
        products += 1
        took = time.perf_counter() - start
        if took >= seconds:
            break
    return {"gflops": 2 * size ** 3 * products / took / 1e9, "products": products, "seconds": took}


def probe_host(seconds: float = PROBE_SECONDS, size: int = PROBE_SIZE) -> HostProbe:
    """Probe this host at torch's current thread count (``torch.get_num_threads()``: the run's threads)."""
    import torch
    timed = matmul_gflops(seconds, size) if seconds > 0 else {"gflops": float("nan"), "products": 0, "seconds": 0.0}
    return HostProbe(cpu_model=cpu_model(), cpu_capability=str(torch.backends.cpu.get_cpu_capability()),
                     threads=torch.get_num_threads(), cpus=os.cpu_count() or 1, gpu=gpu_name(),
                     matmul_gflops=round(timed["gflops"], 1), matmul_size=size,
                     matmul_products=int(timed["products"]), matmul_seconds=round(timed["seconds"], 3),
                     torch=torch.__version__,
                     kernel_env={k: os.environ[k] for k in KERNEL_ENV_VARS if os.environ.get(k)})

