"""scripts/profile_step.py: per-op tables of the demo's work with the host named (fields, not speed)."""

import json
import subprocess
import sys

import pytest

from helpers.commands import SCRIPTS, load_script


def test_profile_tables_name_the_host_and_rank_ops_by_self_cpu_time(tmp_path):
    out = tmp_path / "ops.json"
    result = subprocess.run([sys.executable, str(SCRIPTS / "profile_step.py"), "-parts", "pretrain,predict", "-steps",
                             "1", "-warmup", "0", "-rows", "4", "-predict_shape", "64", "64", "32", "-threads", "1",
                             "-json", str(out)], capture_output=True, encoding="utf-8", errors="replace", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads(out.read_text(encoding="utf-8"))
    assert record["host"]["threads"] == 1 and record["host"]["matmul_gflops"] > 0
    assert result.stdout.startswith("host: ") and "1 thread(s) of" in result.stdout.splitlines()[0]
    assert list(record["parts"]) == ["pretrain", "predict"] and record["finetune_memory_format"] == "NDHWC"
    for name, part in record["parts"].items():
        ops = part["ops"]
        assert part["seconds_per_run"] > 0 and part["steps"] == 1 and len(ops) == 4, name
        selfs = [o["self_cpu_ms"] for o in ops]
        assert selfs == sorted(selfs, reverse=True) and sum(o["self_share_pct"] for o in ops) <= 100.0 + 1e-6
        assert all(o["cpu_total_ms"] >= o["self_cpu_ms"] for o in ops)
        assert f"### {name}: " in result.stdout
    assert "| op | calls / run | self CPU ms / run |" in result.stdout


def test_unknown_parts_are_refused():
    with pytest.raises(SystemExit):
        load_script("profile_step").main(["-parts", "pretrain,warp"])
