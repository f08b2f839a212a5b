"""The studies' statistics over seeds, on hand-made runs."""

from __future__ import annotations

import pytest

from taid_vlm.demo.studies import paired_by_seed, score_summary


def _run(method: str, seed: int, vqa: float, nll: float) -> dict:
    return {"method": method, "seed": seed, "vqa_accuracy": vqa, "nll": nll, "cider": 100.0}


def test_paired_by_seed_differences_and_t_interval():
    runs = [_run("sft", 0, 40.0, 0.50), _run("sft", 1, 50.0, 0.40), _run("sft", 2, 45.0, 0.45),
            _run("fkl", 0, 42.0, 0.49), _run("fkl", 1, 53.0, 0.41), _run("fkl", 2, 46.0, 0.43),
            _run("taid", 1, 49.0, 0.42)]
    d = paired_by_seed(runs, "fkl", "sft")
    assert d["seeds"] == [0, 1, 2] and d["vqa_diffs"] == [2.0, 3.0, 1.0]
    # Pairing removes the seeds' shared spread (sd 5 per method) and leaves the differences' (sd 1).
    assert d["vqa"] == pytest.approx(2.0) and d["vqa_ci"] == pytest.approx(4.303 / 3 ** 0.5)
    assert d["nll_diffs"] == pytest.approx([-0.01, 0.01, -0.02]) and d["nll"] == pytest.approx(-0.02 / 3)
    # Only the seeds both methods have are paired; one seed gives no interval.
    t = paired_by_seed(runs, "taid", "fkl")
    assert t["seeds"] == [1] and t["vqa"] == pytest.approx(-4.0) and t["vqa_ci"] == 0.0
    assert paired_by_seed(runs, "rkl", "sft") is None
    assert score_summary([r for r in runs if r["method"] == "sft"])["vqa_sd"] == pytest.approx(5.0)


def test_a_study_names_its_folder_the_same_way_however_it_is_reached(tmp_path, monkeypatch):
    from taid_vlm.demo.studies import Study

    real = tmp_path / "real"
    (tmp_path / "link").symlink_to(real, target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    a, b = Study("real", "tiny"), Study("link", "tiny")
    # The configs of its runs name these paths; equal paths let either spelling reuse the runs.
    data = {k: v for k, v in a.paths.items() if k not in ("tokenizer", "teacher", "tower")}  # the shipped teacher's
    assert a.paths == b.paths and data and all(v.startswith(str(real.resolve())) for v in data.values())
