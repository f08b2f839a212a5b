"""TAID schedule (Algorithm 1): hand-computed trajectory, linear mode, resume, validation."""

import json
import math

import pytest

from taid_vlm.losses import TAIDSchedule, get_loss


def _sig(x):
    return 1.0 / (1.0 + math.exp(-x))


def test_trajectory_matches_hand_computation():
    sched = TAIDSchedule(t_start=0.4, t_end=1.0, alpha=0.1, beta=0.5)
    signals = [2.0, 1.5, 1.2, 1.3]
    total = 100
    # step 0: only stores prev
    assert sched.update(signals[0], 0, total) == 0.4
    # step 1: delta = (2.0 - 1.5) / 2.0 = 0.25, m = 0.5 * 0 + 0.5 * 0.25 = 0.125
    m = 0.125
    t1 = max(0.4 + 0.6 * 1 / 100, 0.4 + 0.1 * _sig(m) * 0.6)
    assert sched.update(signals[1], 1, total) == pytest.approx(t1, abs=1e-12)
    # step 2: delta = 0.3 / 1.5 = 0.2, m = 0.0625 + 0.1 = 0.1625
    m = 0.5 * m + 0.5 * 0.2
    t2 = max(0.4 + 0.6 * 2 / 100, t1 + 0.1 * _sig(m) * (1 - t1))
    assert sched.update(signals[2], 2, total) == pytest.approx(t2, abs=1e-12)
    # step 3: the signal got worse: delta = -0.1 / 1.2
    m = 0.5 * m + 0.5 * (-0.1 / 1.2)
    t3 = max(0.4 + 0.6 * 3 / 100, t2 + 0.1 * _sig(m) * (1 - t2))
    assert sched.update(signals[3], 3, total) == pytest.approx(t3, abs=1e-12)
    assert sched.t == pytest.approx(t3) and sched.prev == 1.3 and sched.momentum == pytest.approx(m)


def test_linear_floor_and_cap():
    sched = TAIDSchedule(t_start=0.2, t_end=0.8, alpha=0.0, beta=0.9)
    sched.update(1.0, 0, 10)
    assert sched.update(1.0, 5, 10) == pytest.approx(0.5)  # alpha = 0: the linear floor
    assert sched.update(1.0, 20, 10) == pytest.approx(0.8)  # capped at t_end
    fast = TAIDSchedule(t_start=0.4, t_end=0.6, alpha=1.0, beta=0.0)
    fast.update(1.0, 0, 1000)
    assert fast.update(0.1, 1, 1000) == pytest.approx(0.6)


def test_non_adaptive_is_linear():
    sched = TAIDSchedule(t_start=0.4, t_end=1.0, adaptive=False, alpha=1.0)
    sched.update(5.0, 0, 4)
    assert [sched.update(j, s, 4) for j, s in [(1.0, 1), (0.5, 2), (9.0, 3)]] == pytest.approx([0.55, 0.7, 0.85])


def test_resume_from_state_dict_continues_identically():
    signals = [3.0, 2.5, 2.4, 2.1, 2.2, 1.9, 1.7]
    ref = TAIDSchedule(alpha=0.05, beta=0.9)
    for i, j in enumerate(signals):
        ref.update(j, i, 50)
    first = TAIDSchedule(alpha=0.05, beta=0.9)
    for i, j in enumerate(signals[:3]):
        first.update(j, i, 50)
    state = json.loads(json.dumps(first.state_dict()))  # the trainer stores it as JSON
    resumed = TAIDSchedule(alpha=0.05, beta=0.9)
    resumed.load_state_dict(state)
    for i, j in enumerate(signals[3:], start=3):
        resumed.update(j, i, 50)
    assert resumed.t == ref.t and resumed.momentum == ref.momentum and resumed.prev == ref.prev


def test_loss_uses_schedule_t():
    loss = get_loss("taid", t_start=0.3)
    assert loss.t == 0.3
    loss.schedule.update(2.0, 0, 10)
    loss.schedule.update(1.0, 5, 10)
    assert loss.t == pytest.approx(0.65)


@pytest.mark.parametrize("kwargs, match", [
    ({"t_start": 0.5, "t_end": 0.5}, "t_start"),
    ({"t_start": -0.1}, "t_start"),
    ({"t_end": 1.5}, "t_end"),
    ({"alpha": 1.5}, "alpha"),
    ({"beta": 1.0}, "beta"),
])
def test_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TAIDSchedule(**kwargs)


def test_update_validation():
    sched = TAIDSchedule()
    with pytest.raises(ValueError, match="signal"):
        sched.update(float("nan"), 0, 10)
    with pytest.raises(ValueError, match="total_steps"):
        sched.update(1.0, 0, 0)
    with pytest.raises(ValueError, match="state_dict"):
        sched.load_state_dict({"t": 0.5})
