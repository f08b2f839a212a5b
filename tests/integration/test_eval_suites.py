"""The eval/ suites in --quick mode, reusing the tiny demo's data and teacher."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

EVAL = Path(__file__).resolve().parents[2] / "eval"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"eval_{name}", EVAL / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run(name: str, work: Path, out: Path, *extra: str) -> dict:
    assert _script(name).main(["--quick", "--work", str(work), "--output", str(out), *extra]) == 0
    return json.loads((out / f"{name}.json").read_text())


def test_methods_quick(demo_tiny, tmp_path):
    rep = _run("methods", demo_tiny, tmp_path, "--methods", "sft,fkl,taid,taid_linear")
    assert set(rep["summary"]) == {"sft", "fkl", "taid", "taid_linear"}
    diffs = {(d["a"], d["b"]): d for d in rep["differences"]}
    assert set(diffs) == {("fkl", "sft"), ("taid", "sft"), ("taid_linear", "sft"), ("taid", "fkl")}
    fkl, sft = (next(r for r in rep["runs"] if r["method"] == m) for m in ("fkl", "sft"))
    assert diffs[("fkl", "sft")]["vqa"] == pytest.approx(fkl["vqa_accuracy"] - sft["vqa_accuracy"])
    assert all(0 <= s["vqa_mean"] <= 100 for s in rep["summary"].values())
    assert (tmp_path / "methods.png").is_file() and "| method |" in (tmp_path / "methods.md").read_text()
    assert rep["command"].startswith("python eval/methods.py") and rep["machine"]


def test_t_schedule_quick(demo_tiny, tmp_path):
    methods = _run("methods", demo_tiny, tmp_path / "m", "--methods", "taid,taid_linear")
    rep = _run("t_schedule", demo_tiny, tmp_path)
    linear, *adaptive = rep["runs"]
    assert linear["adaptive"] is False and all(r["adaptive"] for r in adaptive)
    # The adaptive update can only move t above the linear floor, never below it.
    for r in adaptive:
        assert all(a >= b - 1e-12 for a, b in zip(r["t"], linear["t"]))
    assert (tmp_path / "t_schedule.png").is_file()
    # The rows with TAID's default t_start / alpha are methods.py's runs, reused (same folder and the
    # train time read back), not retrained; and methods.py then reuses them in turn.
    shared = {r["method"]: r for r in methods["runs"]}
    for row, method in ((linear, "taid_linear"), (adaptive[0], "taid")):
        assert (row["seeds"][0]["run"], row["seeds"][0]["train_seconds"]) == (shared[method]["run"],
                                                                             shared[method]["train_seconds"])
    again = _run("methods", demo_tiny, tmp_path / "m2", "--methods", "taid,taid_linear")
    assert [r["train_seconds"] for r in again["runs"]] == [r["train_seconds"] for r in methods["runs"]]


@pytest.mark.slow
def test_capacity_gap_quick(demo_tiny, tmp_path):
    rep = _run("capacity_gap", demo_tiny, tmp_path, "--seeds", "1")
    assert rep["param_ratio"] >= 10
    assert [t["name"] for t in rep["teachers"]] == ["S", "M", "L"]
    assert set(rep["scores"]["L"]) == set(rep["methods"]) and "taid" in rep["methods"]


def test_bench_cache_quick(demo_tiny, tmp_path):
    rep = _run("bench_cache", demo_tiny, tmp_path)
    assert rep["bytes_per_response_token"] <= 400
    assert rep["response_tokens"] > 0 and rep["step_seconds_cached"] > 0


def test_bench_sampling_quick(demo_tiny, tmp_path):
    rep = _run("bench_sampling", demo_tiny, tmp_path)
    modes = rep["modes"]
    assert set(modes) == {"none", "mixed", "adaptive"}
    assert modes["none"]["generation_seconds"] == 0 and modes["mixed"]["generation_seconds"] > 0


def test_study_reuses_a_run_only_for_the_same_config(demo_tiny, capsys):
    from taid_vlm.demo.studies import Study
    from taid_vlm.train.run_log import read_log

    def probe(steps: int) -> dict:
        return Study(demo_tiny, "tiny", student_steps=steps).student("sft", 0, None, name="reuse_probe")

    first = probe(4)
    weights = Path(first["run"]) / "final" / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    assert probe(4)["vqa_accuracy"] == first["vqa_accuracy"]
    assert "reuse_probe: reusing" in capsys.readouterr().out and weights.stat().st_mtime_ns == stamp
    # Same folder, other config: the stale run must not be taken for the new one.
    probe(6)
    assert "holds a run of another config" in capsys.readouterr().out
    assert read_log(Path(first["run"]) / "logs" / "train.jsonl")[-1]["step"] == 6


def test_demo_and_study_share_runs_whatever_the_folder_is_called(demo_tiny, monkeypatch, capsys):
    """A demo re-run through a relative --output, and a Study on the same folder, reuse the demo's
    students: their saved configs name the same (absolute) paths."""
    from taid_vlm.cli import main
    from taid_vlm.demo.studies import Study

    # Other tests' studies may have retrained some of the shared folder's runs with their own
    # configs: an absolute-path demo first puts the demo's runs back, whatever ran before.
    assert main(["demo", "--preset", "tiny", "--output", str(demo_tiny)]) == 0
    monkeypatch.chdir(demo_tiny.parent)
    capsys.readouterr()
    assert main(["demo", "--preset", "tiny", "--output", demo_tiny.name]) == 0
    out = capsys.readouterr().out
    assert "): training (" not in out and "student (SFT (no teacher), seed 1): reusing" in out
    Study(demo_tiny.name, "tiny").student("fkl", 1, Study(demo_tiny, "tiny").teacher())
    assert "student_fkl_s1: reusing" in capsys.readouterr().out
