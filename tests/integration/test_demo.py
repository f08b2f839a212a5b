"""``taid-vlm demo --preset tiny``: the whole job end to end, with real (not staged) results."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from taid_vlm.cli import main
from taid_vlm.train.run_log import read_log
from taid_vlm.train.setup import RUN_MARKER


def test_demo_artefacts_and_teacher_beats_the_blind_prior(demo_tiny):
    summary = json.loads((demo_tiny / "summary.json").read_text())
    results, runs = summary["results"], summary["runs"]
    seeds = summary["preset"]["seeds"]
    assert seeds >= 2 and runs == {m: [f"student_{m}_s{s}" for s in range(seeds)] for m in ("taid", "fkl", "sft")}
    assert set(results) == {"teacher", *(n for names in runs.values() for n in names)}
    for name in ("report.md", "curves.png", "scores/compare.png", "scores/compare.md"):
        assert (demo_tiny / name).is_file(), name
    report = (demo_tiny / "report.md").read_text()
    assert "Student: TAID" in report and "Blind prior" in report and "95% CI" in report
    assert "VQA accuracy by question type" in report and "| colour |" in report
    assert f"t-intervals over {seeds} seeds per method" in report
    # The teacher must use the image: a clear margin over answering from the question alone.
    assert results["teacher"]["vqa"]["vqa_accuracy"] >= summary["blind_prior_vqa"] + 10
    # Students are several times smaller than the teacher.
    assert results["teacher"]["params"] >= 4 * results["student_taid_s0"]["params"]
    # Every student of a seed had the same data, steps and seed; seeds differ.
    for s in range(seeds):
        steps = {m: [r["step"] for r in read_log(demo_tiny / f"student_{m}_s{s}" / "logs" / "train.jsonl")]
                 for m in runs}
        assert steps["taid"] == steps["fkl"] == steps["sft"]
        assert yaml.safe_load((demo_tiny / f"student_fkl_s{s}" / RUN_MARKER).read_text())["train"]["seed"] == s
    t = [r["taid_t"] for r in read_log(demo_tiny / "student_taid_s0" / "logs" / "train.jsonl")]
    assert t[0] == 0.4 and t[-1] > t[0] and all(b >= a for a, b in zip(t, t[1:]))


def test_demo_students_start_from_the_teachers_frozen_tower_and_read_its_cache(demo_tiny):
    from safetensors.torch import load_file

    from taid_vlm.demo.teachers import teacher_dir

    teacher = load_file(str(teacher_dir("M") / "model.safetensors"))
    for name in ("student_sft_s0", "student_taid_s1"):
        cfg = yaml.safe_load((demo_tiny / name / RUN_MARKER).read_text())
        assert cfg["student"]["train_vision"] is False
        assert cfg["student"]["config"]["vision"]["from_model"] == str(teacher_dir("M"))
        student = load_file(str(demo_tiny / name / "final" / "model.safetensors"))
        tower = [k for k in teacher if k.startswith("vision_tower.")]
        # Frozen, batch-norm statistics included: after training, still the teacher's tower.
        assert tower and all(torch.equal(student[k], teacher[k]) for k in tower)
    cfg = yaml.safe_load((demo_tiny / "student_taid_s0" / RUN_MARKER).read_text())
    cache = Path(cfg["teacher"]["cache"])
    index = json.loads((cache / "index.json").read_text())
    assert cache.parent == demo_tiny and index["top_k"] == index["vocab_size"] and index["dtype"] == "float32"


def test_demo_rerun_reuses_finished_stages(demo_tiny, capsys):
    weights = demo_tiny / "student_taid_s0" / "final" / "model.safetensors"
    before = weights.stat().st_mtime_ns
    assert main(["demo", "--preset", "tiny", "--output", str(demo_tiny)]) == 0
    out = capsys.readouterr().out
    assert "shipped demo teacher M" in out and "student (TAID, seed 0): reusing" in out
    assert "student (SFT (no teacher), seed 1): reusing" in out and "training (" not in out
    assert "teacher cache M: reusing" in out
    assert weights.stat().st_mtime_ns == before


def test_demo_teacher_saw_more_images_and_intervals_come_from_the_run(demo_tiny):
    from taid_vlm.demo.teachers import build_info

    summary = json.loads((demo_tiny / "summary.json").read_text())
    n_student = summary["preset"]["data"]["n_train"]
    student_train = yaml.safe_load((demo_tiny / "student_sft_s0" / RUN_MARKER).read_text())["data"]["train"]
    records = json.loads(Path(student_train).read_text())
    # The students' images are the first n of the teacher's set (a prefix: see test_synthetic).
    assert [r["image"] for r in records] == [f"images/train_{i:05d}.png" for i in range(n_student)]
    assert build_info("M")["spec"]["data"]["n_train"] >= 4 * n_student
    teacher = yaml.safe_load((demo_tiny / "student_taid_s0" / RUN_MARKER).read_text())["teacher"]["path"]
    assert Path(teacher).name == "M" and Path(teacher).parent.name == "teachers"
    per_item = json.loads((demo_tiny / "results" / "student_taid_s0.json").read_text())["items"]
    assert len(per_item["vqa"]) == summary["preset"]["eval"]["limit"]
    for name, stats in summary["intervals"].items():  # teacher and blind prior: bootstrap over items
        ci = stats["vqa"]
        assert ci["low"] <= ci["estimate"] <= ci["high"], name
        # A mean of 0-100 scores (sd <= 50) over n questions: about 2 * 1.96 * sd / sqrt(n) wide, plus
        # the resampling noise of a 2,000-resample percentile interval (a few per cent).
        assert 0 <= ci["high"] - ci["low"] <= 4.4 * 50 / ci["n"] ** 0.5, name
    nll = summary["intervals"]["teacher"]["nll"]
    assert nll["estimate"] == pytest.approx(summary["results"]["teacher"]["nll"]["nll"])
    # Students: the mean over seeds of the runs' own scores; differences paired by seed.
    runs = summary["runs"]
    taid = [summary["results"][n]["vqa"]["vqa_accuracy"] for n in runs["taid"]]
    sft = [summary["results"][n]["vqa"]["vqa_accuracy"] for n in runs["sft"]]
    assert summary["methods"]["taid"]["vqa"]["values"] == pytest.approx(taid)
    diff = summary["differences"]["TAID - SFT"]["vqa"]
    assert diff["values"] == pytest.approx([a - b for a, b in zip(taid, sft)])
    assert diff["low"] <= diff["estimate"] <= diff["high"]
    # The verdict in words follows the interval of this run.
    report = (demo_tiny / "report.md").read_text()
    line = next(x for x in report.splitlines() if x.startswith("- TAID - SFT:"))
    if diff["low"] > 0:
        assert "TAID beat SFT" in line
    elif diff["high"] < 0:
        assert "SFT beat TAID" in line
    else:
        assert "not separated" in line
