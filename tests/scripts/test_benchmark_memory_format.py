"""scripts/benchmark_memory_format.py: both layouts of each network, the same weights and batch (fields, not
speed), in this process."""

import json

import pytest

from helpers.commands import load_script


def test_each_network_is_timed_in_both_layouts_and_the_rows_name_the_host(tmp_path, capsys):
    script = load_script("benchmark_memory_format")
    out = tmp_path / "rows.json"
    assert script.main(["-networks", "mim_unetr", "-patch", "64", "32", "32", "-warmup", "0", "-repeats", "2",
                        "-threads", "1", "-json", str(out)]) == 0
    printed = capsys.readouterr().out
    record = json.loads(out.read_text(encoding="utf-8"))
    assert record["host"]["threads"] == 1 and record["host"]["matmul_gflops"] > 0 and printed.startswith("host: ")
    (row,) = record["rows"]
    assert row["network"] == "mim_unetr" and row["patch_zyx"] == [64, 32, 32]
    assert len(row["NCDHW_all"]) == len(row["NDHWC_all"]) == 2 and min(row["NCDHW_all"] + row["NDHWC_all"]) > 0
    assert row["ndhwc_over_ncdhw"] == pytest.approx(row["NDHWC_seconds"] / row["NCDHW_seconds"], abs=2e-3)
    assert "| mim_unetr |" in printed


def test_unknown_networks_are_refused():
    with pytest.raises(SystemExit):
        load_script("benchmark_memory_format").main(["-networks", "mim_unetr,unet2d"])
