"""Trainer pieces: data order, LR schedule, RNG/checkpoint state round trips."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from taid_vlm.config import TrainConfig
from taid_vlm.train.checkpoint import rng_state, set_rng_state
from taid_vlm.train.data_order import MicroBatchPlan
from taid_vlm.train.optim import lr_lambda


def test_plan_covers_each_sample_once_per_epoch_across_ranks():
    plans = [MicroBatchPlan(23, batch_size=3, world_size=2, rank=r, seed=7) for r in range(2)]
    assert plans[0].per_epoch == 3  # 23 // 6, the incomplete tail is dropped
    seen = [i for m in range(3) for p in plans for i in p.indices(m)]
    assert len(seen) == 18 and len(set(seen)) == 18
    # The next epoch is another permutation, and the order is a pure function of (seed, micro).
    assert [plans[0].indices(m) for m in range(3, 6)] != [plans[0].indices(m) for m in range(3)]
    fresh = MicroBatchPlan(23, batch_size=3, world_size=2, rank=0, seed=7)
    assert fresh.indices(4) == plans[0].indices(4)


def test_plan_rejects_too_little_data():
    with pytest.raises(ValueError, match="data.train"):
        MicroBatchPlan(3, batch_size=4, world_size=1, rank=0, seed=0)


def test_lr_schedule_warmup_then_cosine():
    f = lr_lambda(TrainConfig(warmup_steps=2, scheduler="cosine"), total_steps=12)
    assert [f(0), f(1)] == [0.5, 1.0]
    assert f(2) == pytest.approx(1.0)
    assert f(7) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert f(12) == pytest.approx(0.0)
    g = lr_lambda(TrainConfig(scheduler="linear"), total_steps=10)
    assert g(5) == pytest.approx(0.5)


def test_rng_state_roundtrip_through_safe_load(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    torch.save(rng_state(), tmp_path / "rng.pt")
    a = (random.random(), np.random.rand(), torch.rand(3))
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    b = (random.random(), np.random.rand(), torch.rand(3))
    assert a[0] == b[0] and a[1] == b[1] and torch.equal(a[2], b[2])
