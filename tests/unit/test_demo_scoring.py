"""The demo's intervals, paired differences and verdicts on hand-made per-item scores."""

from __future__ import annotations

import json

import numpy as np
import pytest

from taid_vlm.demo.scoring import (
    agreement,
    blind_prior,
    method_stats,
    model_stats,
    seed_differences,
    seed_interval,
    verdicts,
)


def _items(acc: np.ndarray, preds: list[str], nll: np.ndarray, tokens: list[int]) -> dict:
    return {"vqa": list(100.0 * acc), "pred": preds, "nll": list(nll), "tokens": tokens}


@pytest.fixture()
def items() -> dict:
    rng = np.random.default_rng(0)
    n = 1000
    base = rng.random(n) < 0.5
    taid = base | (rng.random(n) < 0.2)  # TAID right wherever SFT is, and on ~10% more questions
    nll = rng.gamma(2.0, 0.3, n)
    tokens = list(rng.integers(1, 9, n))
    ans = ["red" if b else "blue" for b in base]
    return {"teacher": _items(taid, ["Red." if t else "blue" for t in taid], nll - 0.1, tokens),
            "student_taid": _items(taid, ["red" if t else "blue" for t in taid], nll - 0.05, tokens),
            "student_fkl": _items(taid, ["red" if t else "blue" for t in taid], nll, tokens),
            "student_sft": _items(base, ans, nll, tokens)}


def _result(vqa: float, nll: float, preds: list[str]) -> dict:
    return {"vqa": {"vqa_accuracy": vqa}, "nll": {"nll": nll}, "caption": {"CIDEr": 1.0, "Bleu_4": 0.5},
            "items": {"pred": preds}, "params": 100}


@pytest.fixture()
def seed_runs() -> tuple[dict, dict]:
    """Three seeds per method: TAID 2-4 points above SFT on every seed, forward KL within +-1 of
    SFT; seed spread (sd 5) shared by the methods, as a seed's init and data order are."""
    base = {0: 40.0, 1: 50.0, 2: 45.0}
    results = {"teacher": _result(70.0, 0.2, ["red", "red", "blue", "blue"])}
    for s, b in base.items():
        results[f"student_sft_s{s}"] = _result(b, 0.50, ["red", "blue", "blue", "red"])
        results[f"student_fkl_s{s}"] = _result(b + (-1.0, 1.0, 0.5)[s], 0.49 + 0.01 * s, ["red", "red", "red", "red"])
        results[f"student_taid_s{s}"] = _result(b + (2.0, 3.0, 4.0)[s], 0.45, ["red", "red", "blue", "blue"])
    runs = {m: [f"student_{m}_s{s}" for s in base] for m in ("taid", "fkl", "sft")}
    return results, runs


def test_differences_are_paired_by_seed_and_verdicts_follow_them(seed_runs):
    results, runs = seed_runs
    diffs = seed_differences(results, runs, prior=[20.0, 30.0])
    taid = diffs["TAID - SFT"]["vqa"]
    # Pairing removes the seeds' shared spread (sd 5) and leaves the differences' (2, 3, 4: sd 1).
    assert taid["values"] == [2.0, 3.0, 4.0] and taid["estimate"] == pytest.approx(3.0)
    assert taid["high"] - taid["estimate"] == pytest.approx(4.303 / 3 ** 0.5)
    assert diffs["Forward KL - SFT"]["vqa"]["low"] < 0 < diffs["Forward KL - SFT"]["vqa"]["high"]
    assert diffs["TAID - SFT"]["nll"]["estimate"] == pytest.approx(-0.05)
    best = diffs["best student - blind prior"]
    assert best["model"] == "student_taid" and best["vqa"]["values"] == [17.0, 28.0, 24.0]
    text = verdicts(diffs, {"student_taid": "Student: TAID"})
    assert "on VQA accuracy TAID beat SFT (+3.0" in text
    assert "on VQA accuracy Forward KL and SFT are not separated" in text
    assert "t-intervals over 3 seeds per method" in text
    # sd of (17, 28, 24) is 5.6: the lower bound is under 15 although the mean is 23.
    assert "not a clear margin of 15 points" in text
    one = seed_differences(results, {m: names[:1] for m, names in runs.items()}, prior=[0.0])
    assert one["TAID - SFT"]["vqa"] == seed_interval([2.0]) and "One seed per method" in verdicts(one, {})
    assert "seeds" not in verdicts({}, {})


def test_method_stats_average_the_seeds_with_agreement_to_the_teacher(seed_runs):
    results, runs = seed_runs
    stats = method_stats(results, runs)
    assert stats["sft"]["vqa"]["estimate"] == pytest.approx(45.0) and stats["sft"]["vqa"]["n"] == 3
    assert stats["sft"]["vqa"]["high"] - 45.0 == pytest.approx(4.303 * 5 / 3 ** 0.5)
    assert stats["taid"]["agreement"]["estimate"] == 100.0 and stats["fkl"]["agreement"]["estimate"] == 50.0
    assert stats["fkl"]["nll"]["values"] == pytest.approx([0.49, 0.50, 0.51])
    assert stats["taid"]["cider"]["estimate"] == pytest.approx(100.0)


def test_agreement_uses_normalised_answers_and_stats_cover_every_model(items):
    assert agreement(["Red.", "a dog", "2"], ["red", "dog", "two"]) == [100.0, 100.0, 100.0]
    with pytest.raises(ValueError, match="same questions"):
        agreement(["a"], [])
    stats = model_stats(items, [50.0] * 1000)
    assert stats["student_taid"]["agreement"]["estimate"] == 100.0  # "red" vs "Red." normalise equal
    assert "agreement" not in stats["teacher"]
    total = sum(n * t for n, t in zip(items["student_sft"]["nll"], items["student_sft"]["tokens"]))
    assert stats["student_sft"]["nll"]["estimate"] == pytest.approx(total / sum(items["student_sft"]["tokens"]))
    assert stats["blind_prior"]["vqa"]["estimate"] == 50.0


def test_blind_prior_answers_the_most_common_training_answer(tmp_path):
    train = [{"conversations": [{"from": "human", "value": "<image>\nWhat colour is the circle?"},
                                {"from": "gpt", "value": c}]} for c in ("red", "red", "blue")]
    val = [{"question": "What colour is the circle?", "answers": ["red"] * 10},
           {"question": "What colour is the circle?", "answers": ["blue"] * 10},
           {"question": "Never seen?", "answers": ["red"] * 10}]  # falls back to the overall answer
    (tmp_path / "t.json").write_text(json.dumps(train))
    (tmp_path / "v.json").write_text(json.dumps(val))
    assert blind_prior(str(tmp_path / "t.json"), str(tmp_path / "v.json"), limit=3) == [100.0, 0.0, 100.0]
    assert blind_prior(str(tmp_path / "t.json"), str(tmp_path / "v.json"), limit=1) == [100.0]


def test_per_type_table_averages_each_question_type_and_the_seeds():
    from taid_vlm.demo.report import type_table

    results = {"teacher": {"items": {"vqa": [100.0, 0.0, 100.0, 100.0]}},
               "student_sft_s0": {"items": {"vqa": [0.0, 0.0, 100.0, 0.0]}},
               "student_sft_s1": {"items": {"vqa": [100.0, 100.0, 100.0, 0.0]}}}
    types = ["colour", "count", "colour", "count"]
    rows = type_table(results, types, {"sft": ["student_sft_s0", "student_sft_s1"]}).splitlines()
    assert rows[0] == "| model | colour | count |"
    assert rows[2] == "| Teacher (SFT) | 100.0 | 50.0 |" and rows[3] == "| Student: SFT (no teacher) | 75.0 | 25.0 |"
    assert len(rows) == 4
