"""Training on student generations through the CLI, with a VLM student generating from images."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from taid_vlm.cli import main

from .conftest import read_jsonl, write_config


def _train(tmp_path, run_env, name, *overrides):
    d = tmp_path / name
    d.mkdir()
    cfg = write_config(d / "c.yaml", run_env, loss="taid", max_steps=3)
    assert main(["train", str(cfg), *overrides]) == 0
    return d / "out"


def test_mixed_lambda_zero_is_off_policy_training(tmp_path, run_env):
    off = _train(tmp_path, run_env, "off")
    mixed = _train(tmp_path, run_env, "mixed0", "sampling.mode=mixed", "sampling.lam=0")
    a = load_file(str(off / "final/model.safetensors"))
    b = load_file(str(mixed / "final/model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert read_jsonl(mixed / "logs/train.jsonl")[-1]["sampled_batches"] == 0


def test_mixed_lambda_one_trains_only_on_generations(tmp_path, run_env):
    out = _train(tmp_path, run_env, "mixed1", "sampling.mode=mixed", "sampling.lam=1",
                 "sampling.max_new_tokens=6", "sampling.temperature=1.0")
    log = read_jsonl(out / "logs/train.jsonl")
    assert log[-1]["sampled_batches"] == 3  # every micro-batch of the 3 steps
    assert log[-1]["sampling_seconds"] > 0
    off = read_jsonl(_train(tmp_path, run_env, "ref") / "logs/train.jsonl")
    # Different responses -> different token counts and losses from the very first step.
    assert (log[0]["tokens"], log[0]["loss"]) != pytest.approx((off[0]["tokens"], off[0]["loss"]))
