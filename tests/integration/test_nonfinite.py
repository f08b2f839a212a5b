"""A non-finite loss skips the step (counted, logged); too many in a row stop the run."""

from __future__ import annotations

import math

import pytest
import torch

from taid_vlm.config_io import load_config
from taid_vlm.train.loop import Trainer

from .conftest import read_jsonl, write_config


def _poison(trainer: Trainer, calls: set[int]) -> None:
    """Make the student's response rows NaN on the given forward calls (0-based)."""
    module = trainer.acc.unwrap_model(trainer.parts.student_module)
    count = {"n": 0}

    def hook(_mod, _inp, out):
        n = count["n"]
        count["n"] += 1
        if n in calls:
            out.hidden = out.hidden * float("nan")
        return out

    module.register_forward_hook(hook)


def test_nonfinite_step_is_skipped_and_counted(tmp_path, run_env):
    cfg = load_config(write_config(tmp_path / "c.yaml", run_env, loss="fkl", max_steps=3))
    trainer = Trainer(cfg)
    before = {k: v.detach().clone() for k, v in trainer.parts.student.model.state_dict().items()}
    _poison(trainer, {0})
    log_path = tmp_path / "out" / "logs" / "train.jsonl"
    trainer.run()
    log = read_jsonl(log_path)
    assert log[0]["loss"] is None and log[0]["skipped_nonfinite"] == 1
    assert all(math.isfinite(r["loss"]) for r in log[1:]) and log[-1]["skipped_nonfinite"] == 1
    after = trainer.parts.student.model.state_dict()
    assert any(not (before[k] == after[k]).all() for k in before)  # later steps did train


def test_too_many_nonfinite_steps_stop_the_run(tmp_path, run_env):
    cfg = load_config(write_config(tmp_path / "c.yaml", run_env, loss="fkl", max_steps=5), ["train.max_nonfinite=2"])
    trainer = Trainer(cfg)
    _poison(trainer, set(range(100)))
    with pytest.raises(RuntimeError, match="train.max_nonfinite"):
        trainer.run()


def test_nonfinite_gradient_is_caught_without_clipping(tmp_path, run_env):
    """`train.max_grad_norm: 0` turns clipping off, not the check: a NaN gradient skips the step."""
    cfg = load_config(write_config(tmp_path / "c.yaml", run_env, loss="fkl", max_steps=2), ["train.max_grad_norm=0"])
    trainer = Trainer(cfg)
    param = next(q for q in trainer.parts.student.model.parameters() if q.requires_grad)
    calls = {"n": 0}

    def poison(grad):
        calls["n"] += 1
        return grad * float("nan") if calls["n"] == 1 else grad

    param.register_hook(poison)
    before = param.detach().clone()
    trainer.run()
    log = read_jsonl(tmp_path / "out" / "logs" / "train.jsonl")
    assert log[0]["skipped_nonfinite"] == 1 and log[1]["skipped_nonfinite"] == 1
    assert math.isfinite(log[1]["grad_norm"]) and bool(torch.isfinite(param).all())
    assert not torch.equal(before, param.detach())  # the second step did train
