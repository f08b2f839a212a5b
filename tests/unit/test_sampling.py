"""Student sampling: GKD mixed decisions, DistiLLM replay buffer and its threshold rule."""

from __future__ import annotations

import pytest
from torch import nn

from taid_vlm.config import SamplingConfig
from taid_vlm.data.types import Sample
from taid_vlm.train.sampling import StudentSampler, with_response


class FakeStudent:
    """Generates 'gen-<id>' for each prompt and records what it was asked."""

    def __init__(self) -> None:
        self.model = nn.Linear(1, 1)
        self.calls: list[list[str]] = []

    def generate(self, samples, max_new_tokens=32, **kw):
        assert not self.model.training  # generation happens in eval mode
        self.calls.append([s.id for s in samples])
        return [f"gen-{s.id}" for s in samples]


def _samples(n: int) -> list[Sample]:
    return [
        Sample(id=str(i), messages=[
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "q?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": f"ref{i}"}]},
        ], images=["img"]) for i in range(n)
    ]


def _texts(samples):
    return [s.messages[-1]["content"][0]["text"] for s in samples]


def test_with_response_replaces_only_the_last_answer():
    s = _samples(1)[0]
    out = with_response(s, "new")
    assert _texts([out]) == ["new"] and _texts([s]) == ["ref0"]
    assert out.images == s.images and out.messages[0] == s.messages[0] and out.meta["generated"]


@pytest.mark.parametrize(("lam", "expected"), [(0.0, 0), (1.0, 20)])
def test_mixed_extremes(lam, expected):
    fake = FakeStudent()
    sampler = StudentSampler(SamplingConfig(mode="mixed", lam=lam), fake, seed=0, rank=0, by_id={})
    data = _samples(2)
    outs = [sampler(data, m) for m in range(20)]
    assert len(fake.calls) == expected
    if lam == 1.0:
        assert all(_texts(o) == ["gen-0", "gen-1"] for o in outs)
    else:
        assert all(o is data for o in outs)


def test_mixed_decisions_are_a_function_of_seed_and_step():
    cfg = SamplingConfig(mode="mixed", lam=0.5)
    a = StudentSampler(cfg, FakeStudent(), seed=3, rank=0, by_id={})
    b = StudentSampler(cfg, FakeStudent(), seed=3, rank=0, by_id={})
    pick = [a(_samples(1), m)[0].meta.get("generated", False) for m in range(40)]
    assert pick == [b(_samples(1), m)[0].meta.get("generated", False) for m in range(40)]
    assert 8 < sum(pick) < 32  # about half


def test_threshold_rule_on_a_scripted_loss_sequence():
    cfg = SamplingConfig(mode="adaptive", p_init=0.0, p_step=0.1, threshold=0.05)
    sampler = StudentSampler(cfg, FakeStudent(), seed=0, rank=0, by_id={})
    # best: 1.0 | 0.9 improves by 10% | 0.88 only 2.2% -> step | 0.95 worse -> step | 0.7 improves | 0.69 -> step
    got = [sampler.on_validation(v) for v in [1.0, 0.9, 0.88, 0.95, 0.7, 0.69]]
    assert got == pytest.approx([0.0, 0.0, 0.1, 0.2, 0.2, 0.3])
    assert sampler.state.best_val == pytest.approx(0.69)


def test_replay_buffer_fills_caps_and_survives_resume():
    data = _samples(4)
    by_id = {s.id: s for s in data}
    cfg = SamplingConfig(mode="adaptive", p_init=1.0, buffer_size=3)
    fake = FakeStudent()
    sampler = StudentSampler(cfg, fake, seed=0, rank=0, by_id=by_id)
    out = sampler(data[:2], 0)
    assert sorted(_texts(out)) == ["gen-0", "gen-1"]
    sampler(data[2:], 1)
    assert len(sampler.state.buffer) == 3  # capped, oldest dropped
    restored = StudentSampler(cfg, FakeStudent(), seed=0, rank=0, by_id=by_id)
    restored.load_state_dict(sampler.state_dict())
    assert restored.state.buffer == sampler.state.buffer and restored.state.p_use == 1.0
    assert all(t.startswith("gen-") for t in _texts(restored(data[:2], 2)))


def test_adaptive_needs_validation_config():
    from taid_vlm.config import ConfigError
    from taid_vlm.config_io import config_from_dict

    base = {"student": {"family": "text", "config": {}}, "loss": {"name": "sft"}, "data": {"train": "x"}}
    with pytest.raises(ConfigError, match="sampling.mode"):
        config_from_dict({**base, "sampling": {"mode": "adaptive"}})
    with pytest.raises(ConfigError, match="sampling.lam"):
        config_from_dict({**base, "sampling": {"mode": "mixed", "lam": 2}})
    cached = {**base, "loss": {"name": "taid"}, "teacher": {"cache": "some/cache"}}
    with pytest.raises(ConfigError, match=r"sampling\.mode: mixed trains on the student's own generations.*"
                                          r"unset teacher\.cache"):
        config_from_dict({**cached, "sampling": {"mode": "mixed"}})
    assert config_from_dict(cached).teacher.cache == "some/cache"
