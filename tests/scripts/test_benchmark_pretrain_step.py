"""scripts/benchmark_pretrain_step.py runs and reports what it says."""

import json

from helpers.commands import SCRIPTS


def test_benchmark_script_prints_one_json_line_per_configuration():
    import subprocess
    import sys
    script = SCRIPTS / "benchmark_pretrain_step.py"
    result = subprocess.run([sys.executable, str(script), "--configs", "hybrid:tiny", "--input-size", "32",
                             "--warmup", "0", "--repeats", "1"], capture_output=True, encoding="utf-8", errors="replace", timeout=600)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.strip().splitlines()]
    assert len(rows) == 1 and rows[0]["backbone"] == "hybrid" and rows[0]["subvolumes_per_crop"] == 21
    assert rows[0]["sec_per_l1_crop_median"] > 0 and rows[0]["peak_memory_mb"] > 0
