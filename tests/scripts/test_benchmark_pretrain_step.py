"""scripts/benchmark_pretrain_step.py runs and reports what it says."""

import json
import subprocess
import sys

import pytest

from helpers.commands import SCRIPTS


def test_benchmark_script_writes_a_table_and_a_json_row_per_configuration(tmp_path):
    script, out = SCRIPTS / "benchmark_pretrain_step.py", tmp_path / "rows.json"
    result = subprocess.run([sys.executable, str(script), "--configs", "hybrid:tiny", "--input-size", "32",
                             "--warmup", "0", "--repeats", "1", "--chunks", "4", "--json", str(out)],
                            capture_output=True, encoding="utf-8", errors="replace", timeout=600)
    assert result.returncode == 0, result.stderr
    rows = json.loads(out.read_text(encoding="utf-8"))
    assert len(rows) == 1 and rows[0]["backbone"] == "hybrid" and rows[0]["subvolumes_per_crop"] == 21
    row = rows[0]
    assert row["chunk"] == 4 and row["sec_per_l1_crop_median"] > 0 and row["peak_memory_mb"] > 0
    # both figures are rounded from the same unrounded time (seconds to 4 places): equal to rounding error
    seconds = row["sec_per_l1_crop_median"]
    assert row["subvolumes_per_s"] == pytest.approx(21 / seconds, rel=2e-4 / seconds + 1e-4)
    table = result.stdout.strip().splitlines()
    assert table[0].startswith("| backbone | size | S | chunk |") and len(table) == 3
    assert table[2].startswith("| hybrid | tiny | 32 | 4 | False | cpu | fp32 |")
