"""The loss benchmark runs end to end in quick mode and writes its report."""

import json

from tests.conftest import load_eval_script


def _load():
    return load_eval_script("bench_losses")


def test_quick_benchmark_writes_json_and_png(tmp_path):
    assert _load().main(["--quick", "--output", str(tmp_path), "--threads", "1"]) == 0
    report = json.loads((tmp_path / "bench_losses.json").read_text())
    assert (tmp_path / "bench_losses.png").stat().st_size > 0
    assert report["command"].startswith("python eval/bench_losses.py --quick") and report["date"] and report["machine"]
    assert {(c["path"], c["N"], c["V"]) for c in report["cases"]} == {
        (p, 128, 500) for p in ("full", "fused")}
    for case in report["cases"]:
        assert case["status"] == "ok", case
        assert case["peak_extra_mib"] >= 0 and case["time_s"] > 0
    assert len(report["ratios"]) == 1
    for r in report["ratios"]:
        assert r["loss_abs_diff"] < 1e-4 and r["mem_ratio"] >= 0 and r["time_ratio"] > 0
    assert report["target"]["mem_ratio_max"] == 0.10
