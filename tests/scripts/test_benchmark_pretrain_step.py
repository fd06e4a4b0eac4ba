"""scripts/benchmark_pretrain_step.py runs and reports what it says."""

import json
import subprocess
import sys

import pytest

from helpers.commands import SCRIPTS


def test_benchmark_script_writes_a_table_and_a_json_row_per_configuration(tmp_path):
    script, out = SCRIPTS / "benchmark_pretrain_step.py", tmp_path / "rows.json"
    result = subprocess.run([sys.executable, str(script), "-configs", "hybrid:tiny", "-input_size", "32",
                             "-warmup", "0", "-repeats", "1", "-chunks", "4", "--checkpointing", "--channels_last",
                             "-dtypes", "fp32,bf16", "-optimizer", "fused", "-json", str(out)],
                            capture_output=True, encoding="utf-8", errors="replace", timeout=600)
    assert result.returncode == 0, result.stderr
    rows = json.loads(out.read_text(encoding="utf-8"))
    assert [(r["backbone"], r["dtype"]) for r in rows] == [("hybrid", "fp32"), ("hybrid", "bf16")]
    for row in rows:
        assert row["subvolumes_per_crop"] == 21 and row["chunk"] == 4
        assert row["activation_checkpointing"] and row["channels_last"] and not row["compile"]
        assert row["sec_per_l1_crop_median"] > 0 and row["peak_memory_mb"] > 0
        assert row["optimizer"] == "fused" and row["optimizer_sec_median"] > 0
        # both are rounded from the same time t (seconds to 4 places, sub-volumes/s to 3): equal up to
        # 5e-4 plus what 5e-5 s of t moves 21 / t
        seconds = row["sec_per_l1_crop_median"]
        assert row["subvolumes_per_s"] == pytest.approx(21 / seconds, abs=6e-4 + 21 * 6e-5 / seconds ** 2)
    host, *table = [line for line in result.stdout.splitlines() if line.strip()]   # the host line, then the table
    assert host.startswith("host: ") and "GFLOP/s" in host
    assert table[0].startswith("| backbone | size | S | chunk | ckpt | compile | channels last |") and len(table) == 4
    assert table[2].startswith("| hybrid | tiny | 32 | 4 | True | False | True | cpu | fp32 |")
    assert table[3].startswith("| hybrid | tiny | 32 | 4 | True | False | True | cpu | bf16 |")
