"""Bootstrap intervals against closed forms: the normal interval of a mean, of a paired difference,
and of a ratio (token-weighted) mean by the delta method."""

from __future__ import annotations

import numpy as np
import pytest

from taid_vlm.evaluation.bootstrap import bootstrap_ci, format_ci, separated

Z95 = 1.959964


def test_mean_of_bernoulli_scores_matches_the_normal_interval():
    rng = np.random.default_rng(1)
    v = 100.0 * (rng.random(2000) < 0.6)
    ci = bootstrap_ci(v, n_boot=4000, seed=3)
    p = v.mean() / 100
    half = Z95 * 100 * np.sqrt(p * (1 - p) / v.size)  # about 2.1 points
    assert ci["estimate"] == pytest.approx(v.mean())
    assert ci["n"] == 2000
    assert ci["high"] - ci["low"] == pytest.approx(2 * half, rel=0.08)
    assert (ci["low"] + ci["high"]) / 2 == pytest.approx(v.mean(), abs=0.15 * half)


def test_paired_difference_uses_the_same_items():
    rng = np.random.default_rng(2)
    item = rng.normal(0, 10, 1500)  # what both models share per item: cancels in a paired interval
    a = item + rng.normal(1.0, 1.0, 1500)
    b = item + rng.normal(0.0, 1.0, 1500)
    ci = bootstrap_ci(a, b, n_boot=4000)
    d = a - b
    half = Z95 * d.std(ddof=1) / np.sqrt(d.size)  # ~0.07, far below the unpaired ~0.73
    assert ci["estimate"] == pytest.approx(d.mean())
    assert ci["high"] - ci["low"] == pytest.approx(2 * half, rel=0.08)
    assert separated(ci) == 1 and separated(bootstrap_ci(b, a)) == -1


def test_weighted_mean_is_the_ratio_estimator_with_its_delta_method_width():
    rng = np.random.default_rng(3)
    tokens = rng.integers(1, 12, 3000).astype(float)
    nll = rng.gamma(2.0, 0.5, 3000)  # per-sample mean NLL
    ci = bootstrap_ci(nll, weights=tokens, n_boot=4000)
    r = (nll * tokens).sum() / tokens.sum()
    # Delta method for sum(w v) / sum(w): var = sum(w^2 (v - r)^2) / sum(w)^2.
    half = Z95 * np.sqrt((tokens ** 2 * (nll - r) ** 2).sum()) / tokens.sum()
    assert ci["estimate"] == pytest.approx(r)
    assert ci["high"] - ci["low"] == pytest.approx(2 * half, rel=0.08)
    assert bootstrap_ci(nll, weights=np.ones(3000), seed=5) == bootstrap_ci(nll, seed=5)


def test_no_difference_is_not_separated_and_same_seed_same_interval():
    rng = np.random.default_rng(4)
    a, b = rng.normal(0, 1, 800), rng.normal(0, 1, 800)
    ci = bootstrap_ci(a, b, seed=7)
    assert ci == bootstrap_ci(a, b, seed=7)
    assert ci["low"] < ci["estimate"] < ci["high"]
    assert separated({"estimate": 0.1, "low": -0.2, "high": 0.4}) == 0
    assert format_ci({"estimate": 2.0, "low": -0.94, "high": 4.83}, signed=True) == "+2.0 [-0.9, +4.8]"


@pytest.mark.parametrize("kwargs, match", [
    ({"values": []}, "values"),
    ({"values": [1.0, float("nan")]}, "NaN"),
    ({"values": [1.0, 2.0], "baseline": [1.0]}, "same items"),
    ({"values": [1.0, 2.0], "weights": [-1.0, 1.0]}, "weights"),
    ({"values": [1.0, 2.0], "level": 1.0}, "level"),
])
def test_bad_input_names_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        bootstrap_ci(**kwargs)
