"""``taid-vlm demo --preset tiny``: the whole job end to end, with real (not staged) results."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from taid_vlm.cli import main
from taid_vlm.train.run_log import read_log
from taid_vlm.train.setup import RUN_MARKER


def test_demo_artefacts_and_teacher_beats_the_blind_prior(demo_tiny):
    summary = json.loads((demo_tiny / "summary.json").read_text())
    results = summary["results"]
    assert set(results) == {"teacher", "student_taid", "student_fkl", "student_sft"}
    for name in ("report.md", "curves.png", "scores/compare.png", "scores/compare.md"):
        assert (demo_tiny / name).is_file(), name
    report = (demo_tiny / "report.md").read_text()
    assert "Student: TAID" in report and "Blind prior" in report and "95% CI" in report
    assert "VQA accuracy by question type" in report and "| colour |" in report
    # The teacher must use the image: a clear margin over answering from the question alone.
    assert results["teacher"]["vqa"]["vqa_accuracy"] >= summary["blind_prior_vqa"] + 10
    # Students are several times smaller than the teacher.
    assert results["teacher"]["params"] >= 4 * results["student_taid"]["params"]
    # Every student had the same data, steps and seed.
    steps = {n: [r["step"] for r in read_log(demo_tiny / n / "logs" / "train.jsonl")] for n in results
             if n != "teacher"}
    assert steps["student_taid"] == steps["student_fkl"] == steps["student_sft"]
    t = [r["taid_t"] for r in read_log(demo_tiny / "student_taid" / "logs" / "train.jsonl")]
    assert t[0] == 0.4 and t[-1] > t[0] and all(b >= a for a, b in zip(t, t[1:]))


def test_demo_rerun_reuses_finished_stages(demo_tiny, capsys):
    weights = demo_tiny / "student_taid" / "final" / "model.safetensors"
    before = weights.stat().st_mtime_ns
    assert main(["demo", "--preset", "tiny", "--output", str(demo_tiny)]) == 0
    out = capsys.readouterr().out
    assert "shipped demo teacher M" in out and "student (TAID): reusing" in out
    assert "student (SFT (no teacher)): reusing" in out and "training (" not in out
    assert weights.stat().st_mtime_ns == before


def test_demo_teacher_saw_more_images_and_intervals_come_from_the_run(demo_tiny):
    from taid_vlm.demo.teachers import build_info

    summary = json.loads((demo_tiny / "summary.json").read_text())
    n_student = summary["preset"]["data"]["n_train"]
    student_train = yaml.safe_load((demo_tiny / "student_sft" / RUN_MARKER).read_text())["data"]["train"]
    records = json.loads(Path(student_train).read_text())
    # The students' images are the first n of the teacher's set (a prefix: see test_synthetic).
    assert [r["image"] for r in records] == [f"images/train_{i:05d}.png" for i in range(n_student)]
    assert build_info("M")["spec"]["data"]["n_train"] >= 4 * n_student
    teacher = yaml.safe_load((demo_tiny / "student_taid" / RUN_MARKER).read_text())["teacher"]["path"]
    assert Path(teacher).name == "M" and Path(teacher).parent.name == "teachers"
    per_item = json.loads((demo_tiny / "results" / "student_taid.json").read_text())["items"]
    assert len(per_item["vqa"]) == summary["preset"]["eval"]["limit"]
    for name, stats in summary["intervals"].items():
        ci = stats["vqa"]
        assert ci["low"] <= ci["estimate"] <= ci["high"], name
        # A mean of 0-100 scores (sd <= 50) over n questions: about 2 * 1.96 * sd / sqrt(n) wide, plus
        # the resampling noise of a 2,000-resample percentile interval (a few per cent).
        assert 0 <= ci["high"] - ci["low"] <= 4.4 * 50 / ci["n"] ** 0.5, name
    assert summary["results"]["student_taid"]["vqa"]["vqa_accuracy"] == pytest.approx(
        summary["intervals"]["student_taid"]["vqa"]["estimate"])
    nll = summary["intervals"]["student_sft"]["nll"]
    assert nll["estimate"] == pytest.approx(summary["results"]["student_sft"]["nll"]["nll"])
    diff = summary["differences"]["TAID - SFT"]["vqa"]
    taid, sft = (summary["results"][f"student_{m}"]["vqa"]["vqa_accuracy"] for m in ("taid", "sft"))
    assert diff["estimate"] == pytest.approx(taid - sft)
    # The verdict in words follows the interval of this run.
    report = (demo_tiny / "report.md").read_text()
    line = next(x for x in report.splitlines() if x.startswith("- TAID - SFT:"))
    if diff["low"] > 0:
        assert "TAID beat SFT" in line
    elif diff["high"] < 0:
        assert "SFT beat TAID" in line
    else:
        assert "not separated" in line
