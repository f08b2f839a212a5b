"""The demo's intervals, paired differences and verdicts on hand-made per-item scores."""

from __future__ import annotations

import json

import numpy as np
import pytest

from taid_vlm.demo.scoring import agreement, blind_prior, model_stats, paired_stats, verdicts


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


def test_paired_differences_and_verdicts_follow_the_numbers(items):
    prior = [0.0] * 1000
    diffs = paired_stats(items, prior)
    gain = np.mean(items["student_taid"]["vqa"]) - np.mean(items["student_sft"]["vqa"])
    assert diffs["TAID - SFT"]["vqa"]["estimate"] == pytest.approx(gain)
    assert diffs["TAID - SFT"]["vqa"]["low"] > 0
    assert diffs["TAID - SFT"]["nll"]["estimate"] == pytest.approx(-0.05)
    # Identical answers: a zero-width interval at 0, so not separated.
    assert diffs["TAID - Forward KL"]["vqa"] == {"estimate": 0.0, "low": 0.0, "high": 0.0, "n": 1000}
    text = verdicts(diffs, {"student_taid": "Student: TAID"})
    assert "TAID beat SFT (+" in text and "TAID and Forward KL are not separated" in text.split("\n")[2]
    assert "on held-out NLL per token TAID beat Forward KL" in text
    assert "Student: TAID" in text and "a margin of 15 points or more, even at the interval's lower bound" in text
    assert "do not cover training noise" in text  # one run per student: the caveat is always printed
    assert "training noise" not in verdicts({}, {})


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


def test_per_type_table_averages_each_question_type():
    from taid_vlm.demo.report import type_table

    results = {"teacher": {"items": {"vqa": [100.0, 0.0, 100.0, 100.0]}},
               "student_sft": {"items": {"vqa": [0.0, 0.0, 100.0, 0.0]}}}
    rows = type_table(results, ["colour", "count", "colour", "count"]).splitlines()
    assert rows[0] == "| model | colour | count |"
    assert rows[2] == "| Teacher (SFT) | 100.0 | 50.0 |" and rows[3] == "| Student: SFT (no teacher) | 50.0 | 0.0 |"
