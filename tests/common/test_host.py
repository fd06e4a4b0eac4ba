"""The host probe's fields and format (not its speed: the machine running the tests may be busy)."""

import json
import os
import subprocess

import pytest
import torch

from helpers.commands import command
from mim_nnunet.common.host import KERNEL_ENV_VARS, HostProbe, cpu_model, matmul_gflops, probe_host


def test_probe_names_the_cpu_its_kernels_threads_and_gpu(monkeypatch):
    for name in KERNEL_ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    # recorded because it changes the kernels (here to what this process already runs)
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", torch.backends.cpu.get_cpu_capability().lower())
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)                     # the probe runs at the run's threads, whatever they are
        probe = probe_host(seconds=0.05, size=64)
    finally:
        torch.set_num_threads(before)
    assert probe.threads == 1 and probe.cpus == (os.cpu_count() or 1)
    assert probe.cpu_capability == torch.backends.cpu.get_cpu_capability() and probe.torch == torch.__version__
    assert probe.cpu_model == cpu_model() and probe.cpu_model
    assert probe.gpu == (torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
    # GFLOP/s = 2 n^3 per product x products / seconds (rounded to 0.1 from the unrounded time)
    assert probe.matmul_size == 64 and probe.matmul_products >= 1 and probe.matmul_seconds >= 0.05
    expected = 2 * 64 ** 3 * probe.matmul_products / probe.matmul_seconds / 1e9
    assert probe.matmul_gflops == pytest.approx(expected, rel=0.01, abs=0.06)
    assert probe.kernel_env == {"ATEN_CPU_CAPABILITY": torch.backends.cpu.get_cpu_capability().lower()}
    assert json.loads(json.dumps(probe.as_dict())) == probe.as_dict()


def test_probe_line_holds_every_field():
    probe = HostProbe(cpu_model="Some CPU @ 2.20GHz", cpu_capability="AVX2", threads=2, cpus=4, gpu=None,
                      matmul_gflops=51.04, matmul_size=2048, matmul_products=6, matmul_seconds=2.02,
                      torch="2.14.1", kernel_env={"ONEDNN_MAX_CPU_ISA": "AVX2"})
    assert probe.line() == ("host: Some CPU @ 2.20GHz | torch 2.14.1, CPU capability AVX2 | 2 thread(s) of 4 CPU(s) | "
                            "fp32 matmul 2048^3: 51.0 GFLOP/s | GPU: none | ONEDNN_MAX_CPU_ISA=AVX2")
    with_gpu = HostProbe(**{**probe.as_dict(), "gpu": "NVIDIA H100", "kernel_env": {}})
    assert with_gpu.line().endswith("| GPU: NVIDIA H100")


def test_cpu_model_reads_proc_cpuinfo_and_falls_back(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R)  CPU @ 2.20GHz\n"
                    "flags\t\t: fpu avx2\n\nprocessor\t: 1\nmodel name\t: Intel(R) Xeon(R) CPU @ 2.20GHz\n",
                    encoding="utf-8")
    assert cpu_model(info) == "Intel(R) Xeon(R) CPU @ 2.20GHz"
    assert cpu_model(tmp_path / "missing")                   # platform's answer, or "unknown": never empty


def test_matmul_probe_counts_products_over_its_time():
    timed = matmul_gflops(seconds=0.02, size=32)
    assert timed["products"] >= 1 and timed["seconds"] >= 0.02
    assert timed["gflops"] == pytest.approx(2 * 32 ** 3 * timed["products"] / timed["seconds"] / 1e9)


def test_host_command_prints_the_line_or_json():
    env = {k: v for k, v in os.environ.items() if k not in KERNEL_ENV_VARS}
    env["OMP_NUM_THREADS"] = "1"
    line = subprocess.run([command("mim_nnunet"), "host", "-seconds", "0.05"], env=env, capture_output=True,
                          encoding="utf-8", errors="replace", timeout=120)
    assert line.returncode == 0, line.stderr
    assert line.stdout.startswith("host: ") and "1 thread(s) of" in line.stdout and "GFLOP/s" in line.stdout
    fields = subprocess.run([command("mim_nnunet"), "host", "--json", "-seconds", "0.05"], env=env,
                            capture_output=True, encoding="utf-8", errors="replace", timeout=120)
    record = json.loads(fields.stdout)
    assert set(record) == set(HostProbe.__dataclass_fields__) and record["threads"] == 1
    assert record["kernel_env"] == {"OMP_NUM_THREADS": "1"}
