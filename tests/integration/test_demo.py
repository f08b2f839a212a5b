"""``taid-vlm demo --preset tiny``: the whole job end to end, with real (not staged) results."""

from __future__ import annotations

import json

from taid_vlm.cli import main
from taid_vlm.train.run_log import read_log


def test_demo_artefacts_and_teacher_beats_the_blind_prior(demo_tiny):
    summary = json.loads((demo_tiny / "summary.json").read_text())
    results = summary["results"]
    assert set(results) == {"teacher", "student_taid", "student_fkl", "student_sft"}
    for name in ("report.md", "curves.png", "scores/compare.png", "scores/compare.md"):
        assert (demo_tiny / name).is_file(), name
    table = (demo_tiny / "report.md").read_text()
    assert "Student: TAID" in table and "Blind prior" in table
    # The teacher must use the image: a clear margin over answering from the question alone.
    assert results["teacher"]["vqa"]["vqa_accuracy"] >= summary["blind_prior_vqa"] + 10
    # Students are several times smaller than the teacher.
    assert results["teacher"]["params"] >= 4 * results["student_taid"]["params"]
    # Every student had the same data, steps and seed.
    steps = {n: [r["step"] for r in read_log(demo_tiny / n / "logs" / "train.jsonl")] for n in results}
    assert steps["student_taid"] == steps["student_fkl"] == steps["student_sft"]
    t = [r["taid_t"] for r in read_log(demo_tiny / "student_taid" / "logs" / "train.jsonl")]
    assert t[0] == 0.4 and t[-1] > t[0] and all(b >= a for a, b in zip(t, t[1:]))


def test_demo_rerun_reuses_finished_stages(demo_tiny, capsys):
    before = (demo_tiny / "teacher" / "final" / "model.safetensors").stat().st_mtime_ns
    assert main(["demo", "--preset", "tiny", "--output", str(demo_tiny)]) == 0
    out = capsys.readouterr().out
    assert "teacher: reusing" in out and "student (TAID): reusing" in out
    assert (demo_tiny / "teacher" / "final" / "model.safetensors").stat().st_mtime_ns == before
