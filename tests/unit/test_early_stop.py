"""Early stopping's bookkeeping (``train/early_stop.py``) and the ``eval`` section's checks."""

from __future__ import annotations

import math

import pytest

from taid_vlm.config import Config, ConfigError
from taid_vlm.train.early_stop import EarlyStopping


def _feed(watch: EarlyStopping, values: list[float]) -> list[bool]:
    return [watch.update(v, step) for step, v in enumerate(values, start=1)]


def test_loss_is_minimised_with_patience_and_min_delta():
    w = EarlyStopping(higher_is_better=False, patience=2, min_delta=0.1)
    assert _feed(w, [3.0, 2.0, 1.95, 2.5]) == [True, True, False, False]
    # 1.95 is lower but not by more than min_delta: the second bad evaluation stops the run.
    assert w.stopped and (w.best, w.best_step, w.bad_evals) == (2.0, 2, 2)


def test_score_is_maximised_and_an_improvement_resets_the_count():
    w = EarlyStopping(higher_is_better=True, patience=2)
    assert _feed(w, [50.0, 40.0, 60.0, 59.0]) == [True, False, True, False]
    assert not w.stopped and (w.best, w.best_step, w.bad_evals) == (60.0, 3, 1)


def test_nan_never_improves_and_patience_zero_never_stops():
    w = EarlyStopping(higher_is_better=False, patience=0)
    assert _feed(w, [math.nan, 1.0, math.nan, math.nan, math.nan]) == [False, True, False, False, False]
    assert not w.stopped and w.best_step == 2 and w.bad_evals == 3


def test_state_round_trips():
    w = EarlyStopping(higher_is_better=False, patience=3)
    _feed(w, [2.0, 1.0, 1.5])
    twin = EarlyStopping(higher_is_better=False, patience=3)
    twin.load_state_dict(w.state_dict())
    assert twin == w
    assert twin.update(1.6, 4) is False and twin.update(1.7, 5) is False and twin.stopped


def _cfg(**eval_section) -> Config:
    from taid_vlm.config_io import config_from_dict

    return config_from_dict({
        "student": {"family": "text", "config": {"model_type": "qwen2", "hidden_size": 32}},
        "data": {"train": "t.json", "val": eval_section.pop("val", "v.json")},
        "loss": {"name": "sft"},
        "train": {"output_dir": "out", "max_steps": 2},
        "eval": eval_section,
    })


@pytest.mark.parametrize(("section", "field", "hint"), [
    ({"patience": 2, "every": 5}, "eval.metric", "need the metric"),
    ({"keep_best": True, "every": 5}, "eval.metric", "need the metric"),
    ({"metric": "val_los", "patience": 2, "every": 5}, "eval.metric", "valid: val_loss"),
    ({"metric": "eval_vqa_vqa_accuracy", "patience": 2, "every": 5}, "eval.metric", "eval.vqa, which is not set"),
    ({"metric": "val_loss", "patience": 2, "every": 5, "val": None}, "eval.metric", "data.val, which is not set"),
    ({"metric": "val_loss", "patience": 2}, "eval.every", "set it > 0"),
    ({"metric": "val_distil_loss", "patience": 2, "every": 5}, "eval.metric", "no distillation loss"),
    ({"patience": -1}, "eval.patience", ">= 0"),
    ({"metric": "val_loss", "min_delta": -0.1, "every": 5}, "eval.min_delta", ">= 0"),
])
def test_bad_eval_settings_name_the_field(section, field, hint):
    with pytest.raises(ConfigError) as err:
        _cfg(**section).check()
    assert field in str(err.value) and hint in str(err.value)


def test_good_eval_settings_pass_and_pick_the_direction():
    cfg = _cfg(metric="val_loss", patience=3, every=10, keep_best=True)
    cfg.check()
    assert cfg.eval.higher_is_better() is False
    cfg = _cfg(metric="eval_vqa_vqa_accuracy", vqa="q.json", every=10, keep_best=True)
    cfg.check()
    assert cfg.eval.higher_is_better() is True
