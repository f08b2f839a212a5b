"""The step benchmark runs end to end in quick mode: every row, ratios to the floor, JSON and PNG."""

import json

from tests.conftest import load_eval_script


def _load():
    return load_eval_script("bench_step")


def test_quick_benchmark_writes_rows_with_ratios_to_the_floor(tmp_path):
    assert _load().main(["--quick", "--output", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "bench_step.json").read_text())
    assert (tmp_path / "bench_step.png").stat().st_size > 0
    assert report["command"].startswith("python eval/bench_step.py --quick") and report["date"] and report["machine"]
    assert [c["name"] for c in report["configs"]] == ["text_v500", "vlm_v500"]
    for c in report["configs"]:
        assert c["status"] == "ok" and c["response_tokens"] > 0
        rows = {r["row"]: r for r in c["rows"]}
        assert {"floor", "taid", "taid_cached", "sft"} <= set(rows)
        assert rows["floor"]["time_ratio"] == 1.0
        for r in rows.values():
            assert len(r["times_s"]) == 2 and r["median_s"] > 0 and r["peak_extra_mib"] >= 0
            assert r["time_ratio"] > 0 and r["mem_ratio"] >= 0
            assert r["loss"] == r["loss"] and r["loss"] > 0  # finite and positive: the step really ran
    assert set(report["verdicts"]) == {"text_v500", "vlm_v500"}
    assert {"live_time_ok", "live_mem_ok", "cached_time_ok"} <= set(report["verdicts"]["text_v500"])
    # quick runs one baseline (fkl) on the text configuration: judged against the same goals
    fkl = next(r for r in report["configs"][0]["rows"] if r["row"] == "fkl")
    assert report["verdicts"]["text_v500"]["baselines_ok"] == {
        "fkl": fkl["time_ratio"] <= 1.10 and fkl["mem_ratio"] <= 0.5}
