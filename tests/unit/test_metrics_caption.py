"""Caption metrics through pycocoevalcap (needs Java) on tiny hand-checked examples."""

from __future__ import annotations

import os
import shutil

import pytest

from taid_vlm.evaluation import caption
from taid_vlm.evaluation.caption import METRICS, JavaMissingError, caption_scores

needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="pycocoevalcap needs Java")

PREDS = ["A cat sat on the mat.", "red circle", "blue square", ""]
REFS = [["the cat on the mat"], ["Red circle."], ["blue square"], ["green triangle"]]


def _java_children() -> list[int]:
    """Pids of live java processes whose parent is this process (Linux /proc)."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
            with open(f"/proc/{d}/cmdline", "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        state = stat.rsplit(")", 1)[1].split()[0]
        if ppid == os.getpid() and b"java" in cmd and state != "Z":
            out.append(int(d))
    return out


@pytest.fixture(scope="module")
def scored():
    if shutil.which("java") is None:
        pytest.skip("pycocoevalcap needs Java")
    return caption_scores(PREDS, REFS)


@needs_java
def test_all_metrics_present_and_bounded(scored):
    scores, per = scored
    assert list(scores) == list(METRICS)
    assert len(per) == 4
    for name in METRICS:
        upper = 10.0 if name == "CIDEr" else 1.0
        assert 0.0 <= scores[name] <= upper


@needs_java
def test_identical_caption_bleu1_one_and_meteor_rouge_high(scored):
    _, per = scored
    # PTB tokenisation lower-cases and drops punctuation: "Red circle." == "red circle".
    for i in (1, 2):
        assert per[i]["Bleu_1"] == pytest.approx(1.0, abs=1e-6)
        assert per[i]["ROUGE_L"] == pytest.approx(1.0)
        assert 0.9 <= per[i]["METEOR"] <= 1.0


@needs_java
def test_rouge_l_and_bleu1_hand_values(scored):
    _, per = scored
    # cand "a cat sat on the mat" (6 tokens), ref "the cat on the mat" (5): LCS "cat on the mat" = 4.
    # P = 4/6, R = 4/5, beta = 1.2: F = (1 + b^2) P R / (R + b^2 P) = 2.44*(8/15) / (0.8 + 0.96)
    p, r, b2 = 4 / 6, 4 / 5, 1.2**2
    assert per[0]["ROUGE_L"] == pytest.approx((1 + b2) * p * r / (r + b2 * p))  # 0.73939...
    # Clipped unigram matches cat, on, the, mat = 4 of 6; candidate longer than ref -> no brevity penalty.
    assert per[0]["Bleu_1"] == pytest.approx(4 / 6, abs=1e-6)
    assert 0.2 < per[0]["METEOR"] < 0.95


@needs_java
def test_cider_hand_value_and_empty_prediction(scored):
    scores, per = scored
    # Samples 1 and 2 repeat their single reference; their n-grams occur in no other reference, so
    # each has the same idf. Unigram and bigram cosines are 1, there are no 3-/4-grams (cosine 0),
    # lengths are equal (no penalty): CIDEr-D = 10 * (1 + 1 + 0 + 0) / 4 = 5.
    assert per[1]["CIDEr"] == pytest.approx(5.0)
    assert per[2]["CIDEr"] == pytest.approx(5.0)
    # An empty prediction scores 0 everywhere and does not shift the other samples.
    assert all(v == 0.0 for v in per[3].values())
    assert scores["CIDEr"] == pytest.approx(sum(p["CIDEr"] for p in per) / 4)


@needs_java
def test_meteor_jvm_is_closed(scored):
    # ``scored`` ran METEOR (a JVM kept open for its stdio protocol); nothing may be left running.
    assert _java_children() == []


def test_missing_java_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(caption.shutil, "which", lambda name: None)
    with pytest.raises(JavaMissingError, match="need Java"):
        caption_scores(["a dog"], [["a dog"]])


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown caption metrics"):
        caption_scores(["a"], [["a"]], metrics=("SPICE",))
    with pytest.raises(ValueError, match="no non-empty reference"):
        caption_scores(["a"], [[""]])
    with pytest.raises(ValueError, match="predictions"):
        caption_scores(["a", "b"], [["a"]])
