"""``train.max_grad_norm: 0``: the gradient norm is measured, the gradients are not touched."""

from __future__ import annotations

import math

import torch
from accelerate import Accelerator

from taid_vlm.train.optim import clip_or_measure


def _params(seed: int = 0) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(5, 3, generator=g)), torch.nn.Parameter(torch.randn(7, generator=g))]
    for p in params:
        p.grad = 3 * torch.randn(p.shape, generator=g)
    params.append(torch.nn.Parameter(torch.zeros(2)))  # no gradient: left out
    return params


def test_measure_only_matches_the_clip_norm_and_leaves_gradients_alone(monkeypatch):
    acc = Accelerator(cpu=True)
    ref = _params()
    want = float(torch.nn.utils.clip_grad_norm_(ref, math.inf))
    params = _params()
    before = [(p.grad, p.grad.clone()) for p in params if p.grad is not None]
    calls = []
    monkeypatch.setattr(Accelerator, "clip_grad_norm_", lambda *a, **k: calls.append(a))
    assert clip_or_measure(acc, params, 0.0) == want
    assert calls == []  # no clip call: no pass that rescales the gradients
    assert all(p.grad is g and torch.equal(g, copy) for p, (g, copy) in zip(params, before))
    params[0].grad[0, 0] = float("nan")
    assert math.isnan(clip_or_measure(acc, params, 0.0))  # the non-finite check still sees it


def test_a_positive_bound_still_clips():
    acc = Accelerator(cpu=True)
    params = _params()
    norm = clip_or_measure(acc, params, 0.5)
    assert norm > 0.5
    total = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in params if p.grad is not None]))
    assert float(total) <= 0.5 + 1e-5
