"""The eval/ suites in --quick mode, reusing the tiny demo's data and teacher."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import load_eval_script


def _run(name: str, work: Path, out: Path, *extra: str) -> dict:
    assert load_eval_script(name).main(["--quick", "--work", str(work), "--output", str(out), *extra]) == 0
    return json.loads((out / f"{name}.json").read_text())


def test_methods_quick(demo_tiny, tmp_path):
    rep = _run("methods", demo_tiny, tmp_path, "--methods", "sft,fkl,taid,taid_linear")
    assert set(rep["summary"]) == {"sft", "fkl", "taid", "taid_linear"}
    diffs = {(d["a"], d["b"]): d for d in rep["differences"]}
    assert set(diffs) == {("fkl", "sft"), ("taid", "sft"), ("taid_linear", "sft"), ("taid", "fkl"),
                          ("taid", "taid_linear")}
    fkl, sft = (next(r for r in rep["runs"] if r["method"] == m) for m in ("fkl", "sft"))
    assert diffs[("fkl", "sft")]["vqa"] == pytest.approx(fkl["vqa_accuracy"] - sft["vqa_accuracy"])
    assert all(0 <= s["vqa_mean"] <= 100 for s in rep["summary"].values())
    assert (tmp_path / "methods.png").is_file() and "| method |" in (tmp_path / "methods.md").read_text()
    assert rep["command"].startswith("python eval/methods.py") and rep["machine"]
    # Runs are named relative to the work folder: only the command line (which was typed) names it.
    assert str(demo_tiny) not in json.dumps({k: v for k, v in rep.items() if k != "command"})
    assert all(not Path(r["run"]).is_absolute() and (demo_tiny / r["run"] / "final").is_dir() for r in rep["runs"])


def test_methods_pairs_every_method_with_sft_taid_with_every_loss_and_the_top_two():
    methods = load_eval_script("methods")
    vqa = {"sft": [50, 51], "fkl": [55, 57], "dkd": [58, 60], "taid": [54, 53]}
    rows = [{"method": m, "seed": s, "vqa_accuracy": v, "nll": 1.0 - v / 100} for m, vs in vqa.items()
            for s, v in enumerate(vs)]
    summary = {m: {"vqa_mean": sum(vs) / 2} for m, vs in vqa.items()}
    diffs = {(d["a"], d["b"]): d for d in methods._differences(rows, summary)}
    assert list(diffs) == [("fkl", "sft"), ("dkd", "sft"), ("taid", "sft"), ("taid", "fkl"), ("taid", "dkd"),
                           ("dkd", "fkl")]
    assert diffs[("dkd", "fkl")]["vqa_diffs"] == [3, 3] and diffs[("dkd", "fkl")]["vqa"] == pytest.approx(3)
    assert diffs[("taid", "dkd")]["nll"] == pytest.approx(0.055)


def test_sft_steps_quick(demo_tiny, tmp_path):
    rep = _run("sft_steps", demo_tiny, tmp_path, "--methods", "fkl")
    steps = rep["preset_steps"]
    assert [c["steps"] for c in rep["sft"]] == [steps // 2, steps]
    assert rep["best_sft_steps"] == min(rep["sft"], key=lambda c: c["nll_mean"])["steps"]
    # The preset's step count is methods.py's SFT run (its name, so a shared folder reuses it);
    # the shorter one trained only its own steps.
    short, full = (rep["runs"][str(n)][0] for n in (steps // 2, steps))
    assert Path(full["run"]).name == "student_sft_s0" and Path(short["run"]).name == f"student_sft_{steps // 2}steps_s0"
    from taid_vlm.train.run_log import read_log

    assert read_log(demo_tiny / short["run"] / "logs" / "train.jsonl")[-1]["step"] == steps // 2
    best = rep["runs"][str(rep["best_sft_steps"])][0]
    (diff,) = rep["differences"]
    assert diff["nll"] == pytest.approx(rep["distilled_runs"]["fkl"][0]["nll"] - best["nll"])
    assert (tmp_path / "sft_steps.png").is_file() and "(best NLL)" in (tmp_path / "sft_steps.md").read_text()


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
    # Each method's change and the first method's change against each other one, for S->M and M->L.
    steps = [(d["small"], d["large"], d["kind"], d["method"]) for d in rep["steps"]]
    m = rep["methods"]
    assert steps == [(a, b, "change", x) for x in m for a, b in [("S", "M")]] + [
        ("S", "M", "interaction", f"{m[0]} - {x}") for x in m[1:]] + [
        (a, b, "change", x) for x in m for a, b in [("M", "L")]] + [
        ("M", "L", "interaction", f"{m[0]} - {x}") for x in m[1:]]
    by = {(r["teacher"], r["method"]): r for r in rep["runs"]}
    first = next(d for d in rep["steps"] if d["kind"] == "change")
    assert first["nll"] == pytest.approx(by[("M", m[0])]["nll"] - by[("S", m[0])]["nll"])


def test_capacity_gap_pairs_each_teacher_step_by_seed():
    gap = load_eval_script("capacity_gap")
    nll = {("taid", "M"): [0.50, 0.55], ("taid", "L"): [0.47, 0.52], ("fkl", "M"): [0.48, 0.53],
           ("fkl", "L"): [0.51, 0.55]}
    runs = [{"method": m, "teacher": t, "seed": s, "vqa_accuracy": 50.0 + s, "nll": v}
            for (m, t), vs in nll.items() for s, v in enumerate(vs)]
    steps = {(d["kind"], d["method"]): d for d in gap.teacher_steps(runs, ["M", "L"], ["taid", "fkl"])}
    assert set(steps) == {("change", "taid"), ("change", "fkl"), ("interaction", "taid - fkl")}
    assert steps[("change", "taid")]["nll_diffs"] == pytest.approx([-0.03, -0.03])
    assert steps[("change", "fkl")]["nll_diffs"] == pytest.approx([0.03, 0.02])
    # TAID's gain minus forward KL's, seed by seed: -0.06 and -0.05.
    assert steps[("interaction", "taid - fkl")]["nll"] == pytest.approx(-0.055)
    assert steps[("interaction", "taid - fkl")]["vqa"] == pytest.approx(0.0)


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
    weights = demo_tiny / first["run"] / "final" / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    assert probe(4)["vqa_accuracy"] == first["vqa_accuracy"]
    assert "reuse_probe: reusing" in capsys.readouterr().out and weights.stat().st_mtime_ns == stamp
    # Same folder, other config: the stale run must not be taken for the new one.
    probe(6)
    assert "holds a run of another config" in capsys.readouterr().out
    assert read_log(demo_tiny / first["run"] / "logs" / "train.jsonl")[-1]["step"] == 6


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
