"""Early stopping and keep-best in a real run (tiny recipe, CPU). The evaluation is scripted by step,
so when the run must stop, and which step's weights it must keep, are known in advance."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from taid_vlm.cli import main
from taid_vlm.train.checkpoint import list_checkpoints
from taid_vlm.train.loop import Trainer

from .conftest import read_jsonl, write_config

# val_loss by step: best at 2; 3 and 4 are worse, 5 is lower but not by more than min_delta = 0.2.
SCRIPT = {1: 3.0, 2: 2.0, 3: 2.5, 4: 2.4, 5: 1.9, 6: 1.0, 7: 0.5, 8: 0.1}
SETTINGS = ["eval.metric=val_loss", "eval.every=1", "eval.patience=3", "eval.min_delta=0.2",
            "eval.keep_best=true"]


@pytest.fixture
def scripted_eval(monkeypatch):
    calls = []

    def evaluate(self):
        calls.append(self.step)
        if self.step == CRASH.get("at"):
            raise KeyboardInterrupt("scripted crash")
        return {"val_loss": SCRIPT[self.step]}

    monkeypatch.setattr(Trainer, "evaluate", evaluate)
    return calls


CRASH: dict[str, int] = {}


def _run(tmp_path, run_env, *extra):
    cfg = write_config(tmp_path / "c.yaml", run_env, loss="sft", max_steps=8, batch_size=2, save_every=1,
                       keep_last=10)
    return main(["train", str(cfg), *SETTINGS, *extra])


def _weights(path):
    return load_file(str(path))


def test_stops_after_patience_and_ships_the_best_step(tmp_path, run_env, scripted_eval, one_thread):
    assert _run(tmp_path, run_env) == 0
    out = tmp_path / "out"
    steps = [r["step"] for r in read_jsonl(out / "logs" / "train.jsonl") if "loss" in r]
    assert max(steps) == 5  # evaluations 3, 4, 5 did not improve: stopped, 3 steps before the end
    # Step 5's evaluation decided the stop and is not repeated; the last one scores the restored weights.
    assert scripted_eval == [1, 2, 3, 4, 5, 5]
    metrics = json.loads((out / "final" / "metrics.json").read_text())["metrics"]
    assert metrics["stopped_early"] == 1.0 and metrics["best_step"] == 2.0 and metrics["best_val_loss"] == 2.0
    # The shipped student is step 2's: the same tensors as checkpoint-2's model, unlike step 5's.
    final = _weights(out / "final" / "model.safetensors")
    ckpt = {p.name: p for p in list_checkpoints(out)}
    at2, at5 = _weights(ckpt["checkpoint-2"] / "model.safetensors"), _weights(ckpt["checkpoint-5"] / "model.safetensors")
    shared = [k for k in final if k in at2]
    assert len(shared) > 10
    assert all(torch.equal(final[k], at2[k]) for k in shared)
    assert not all(torch.equal(final[k], at5[k]) for k in shared)
    state = json.loads((ckpt["checkpoint-5"] / "state.json").read_text())
    assert state["early_stop"] == {"best": 2.0, "best_step": 2, "bad_evals": 3, "stopped": True}
    # Only best files some kept checkpoint refers to remain.
    assert sorted(p.name for p in (out / "best").iterdir()) == ["best-1.safetensors", "best-2.safetensors"]


def test_resumed_run_stops_where_the_uninterrupted_one_does(tmp_path, run_env, scripted_eval, one_thread):
    straight = tmp_path / "a"
    straight.mkdir()
    assert _run(straight, run_env) == 0
    broken = tmp_path / "b"
    broken.mkdir()
    CRASH["at"] = 4  # dies in step 4's evaluation: checkpoint-3 is the last one
    try:
        with pytest.raises(KeyboardInterrupt):
            _run(broken, run_env)
    finally:
        CRASH.clear()
    assert [p.name for p in list_checkpoints(broken / "out")][-1] == "checkpoint-3"
    assert _run(broken, run_env, "--resume", "auto") == 0
    a, b = _weights(straight / "out" / "final" / "model.safetensors"), _weights(broken / "out" / "final" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ma = json.loads((straight / "out" / "final" / "metrics.json").read_text())["metrics"]
    mb = json.loads((broken / "out" / "final" / "metrics.json").read_text())["metrics"]
    assert (mb["best_step"], mb["stopped_early"]) == (ma["best_step"], ma["stopped_early"]) == (2.0, 1.0)


def test_without_keep_best_the_last_step_ships_and_the_best_is_only_reported(tmp_path, run_env, scripted_eval,
                                                                              one_thread):
    assert _run(tmp_path, run_env, "eval.keep_best=false") == 0
    out = tmp_path / "out"
    final = _weights(out / "final" / "model.safetensors")
    at5 = _weights({p.name: p for p in list_checkpoints(out)}["checkpoint-5"] / "model.safetensors")
    assert all(torch.equal(final[k], at5[k]) for k in final if k in at5)
    assert not (out / "best").exists()
    assert scripted_eval == [1, 2, 3, 4, 5]  # nothing restored, so nothing evaluated again
    assert json.loads((out / "final" / "metrics.json").read_text())["metrics"]["best_step"] == 2.0
