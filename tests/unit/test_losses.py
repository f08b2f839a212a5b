"""Loss core: closed forms, limits, brute-force definitions, masking, dtypes, validation."""

import io
import math

import pytest
import torch
import torch.nn.functional as F

from taid_vlm.losses import (
    LOSS_NAMES,
    TAIDSchedule,
    adaptive_kl,
    dkd_loss,
    forward_kl,
    generalized_jsd,
    get_loss,
    reverse_kl,
    skew_forward_kl,
    skew_reverse_kl,
    taid_loss,
    total_variation,
)

# float(loss) on a graph-connected scalar is intended here.
pytestmark = pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad")

N, V = 7, 11


def _logits(seed=0, n=N, v=V, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, v, generator=g) * scale, torch.randn(n, v, generator=g) * scale


def _kwargs(name):
    return {"t": 0.6} if name == "taid" else {}


def _call(name, s, t, mask=None, labels=None, reduction="mean"):
    loss = get_loss(name, **_kwargs(name))
    if labels is None:
        labels = torch.arange(s.shape[-2] if s.dim() == 2 else 1).remainder(s.shape[-1]).expand(s.shape[:-1])
    return loss(s, t if loss.needs_teacher else None, mask, labels=labels, reduction=reduction), loss


def test_taid_closed_form_gradient():
    s, t = _logits()
    s.requires_grad_()
    mask = torch.tensor([1, 1, 0, 1, 0, 1, 1], dtype=torch.bool)
    taid_loss(s, t, 0.3, mask).backward()
    p_t = torch.softmax(0.7 * s.detach() + 0.3 * t, -1)
    expected = (torch.softmax(s.detach(), -1) - p_t) / mask.sum() * mask[:, None]
    torch.testing.assert_close(s.grad, expected, atol=1e-7, rtol=1e-5)


def test_fkl_closed_form_gradient_and_value():
    s, t = _logits(1)
    s.requires_grad_()
    val = forward_kl(s, t)
    val.backward()
    p, q = torch.softmax(t.double(), -1), torch.softmax(s.detach().double(), -1)
    assert float(val.detach()) == pytest.approx(float((p * (p.log() - q.log())).sum(-1).mean()), rel=1e-5)
    torch.testing.assert_close(s.grad.double(), (q - p) / N, atol=1e-7, rtol=1e-5)


def test_taid_limits():
    s, t = _logits(2)
    s0 = s.clone().requires_grad_()
    v0 = taid_loss(s0, t, 0.0)
    v0.backward()
    assert float(v0.detach()) == 0.0 and float(s0.grad.abs().max()) < 1e-7  # q - q up to fp32 rounding
    s1, s2 = s.clone().requires_grad_(), s.clone().requires_grad_()
    v1, v2 = taid_loss(s1, t, 1.0), forward_kl(s2, t)
    (v1 + v2).backward()
    assert float(v1.detach()) == pytest.approx(float(v2.detach()), rel=1e-6)
    torch.testing.assert_close(s1.grad, s2.grad)


@pytest.mark.parametrize("name", [n for n in LOSS_NAMES if n != "sft"])
def test_zero_for_identical_inputs(name):
    s, _ = _logits(3)
    s.requires_grad_()
    val, _ = _call(name, s, s.detach().clone())
    val.backward()
    assert abs(float(val)) < 1e-6
    assert float(s.grad.abs().max()) < 1e-6


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_all_masked_is_zero_with_zero_grad(name):
    s, t = _logits(4)
    s.requires_grad_()
    val, loss = _call(name, s, t, mask=torch.zeros(N, dtype=torch.bool))
    val.backward()
    assert float(val) == 0.0 and not math.isnan(float(val))
    assert float(s.grad.abs().max()) == 0.0
    assert all(float(v) == 0.0 for v in loss.stats.values())


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_bf16_inputs_match_fp32(name):
    s, t = _logits(5)
    sb, tb = s.bfloat16().requires_grad_(), t.bfloat16()
    sf = sb.detach().float().requires_grad_()
    vb, _ = _call(name, sb, tb)
    vf, _ = _call(name, sf, tb.float())
    (vb + vf).backward()
    assert vb.dtype == torch.float32
    assert float(vb) == pytest.approx(float(vf), rel=1e-6, abs=1e-7)
    assert sb.grad.dtype == torch.bfloat16
    torch.testing.assert_close(sb.grad.float(), sf.grad, atol=1e-3, rtol=1e-2)


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_reduction_invariant_to_micro_batch_splits(name):
    s, t = _logits(6, n=12)
    labels = torch.randint(0, V, (12,), generator=torch.Generator().manual_seed(0))
    mask = torch.rand(12, generator=torch.Generator().manual_seed(1)) > 0.3
    mean, _ = _call(name, s, t, mask, labels)
    parts = [(0, 5), (5, 6), (6, 12)]
    total = sum(_call(name, s[a:b], t[a:b], mask[a:b], labels[a:b], "sum")[0] for a, b in parts)
    assert float(total / mask.sum()) == pytest.approx(float(mean), rel=1e-5)


@pytest.mark.parametrize("name", [n for n in LOSS_NAMES if n != "sft"])
def test_teacher_only_neg_inf_column_is_excluded_from_both_sides(name):
    """A column only the teacher excludes (a vocabulary the student has and the teacher lacks) adds
    zero terms, as if sliced out of both: no ~1e9-sized reverse-KL/AKL value, same gradient."""
    s, t = _logits(17, v=V + 2)
    t[:, V:] = -math.inf  # the student's logits there stay finite
    labels = torch.randint(0, V, (N,), generator=torch.Generator().manual_seed(3))
    sp = s.clone().requires_grad_()
    sl = s[:, :V].clone().requires_grad_()
    vp, _ = _call(name, sp, t, labels=labels)
    vs, _ = _call(name, sl, t[:, :V].clone(), labels=labels)
    (vp + vs).backward()
    assert float(vp) == pytest.approx(float(vs), rel=1e-5, abs=1e-7)
    torch.testing.assert_close(sp.grad[:, :V], sl.grad)
    assert float(sp.grad[:, V:].abs().max()) == 0.0


def test_taid_owns_its_schedule_hook_and_state():
    loss, ref = get_loss("taid", t_start=0.3, alpha=0.05), TAIDSchedule(0.3, 1.0, 0.05)
    logs = []
    for step, signal in enumerate([2.0, 1.5, 1.2, 1.1]):
        logs.append(loss.on_optimizer_step({"taid_ce": signal, "taid_kl": 0.1}, step, 10))
        ref.update(signal, step, 10)
    assert logs[-1]["taid_t"] == ref.t and logs[-1]["taid_signal"] == 1.1 and ref.t >= 0.3 + 0.7 * 3 / 10 - 1e-12
    assert loss.on_optimizer_step(None, 4, 10)["taid_t"] == ref.t  # a skipped step leaves t alone
    buf = io.BytesIO()
    torch.save(loss.state_dict(), buf)  # the state travels with state_dict, loadable weights_only
    again = get_loss("taid", t_start=0.3, alpha=0.05)
    again.load_state_dict(torch.load(io.BytesIO(buf.getvalue()), weights_only=True))
    assert again.schedule.state_dict() == loss.schedule.state_dict()


def test_ctkd_curriculum_runs_in_its_step_hook():
    loss = get_loss("ctkd", lambda_min=0.0, lambda_max=1.0)
    loss.on_step_begin(5, 10)
    assert loss.grl_lambda == pytest.approx(0.5)
    logs = loss.on_optimizer_step({}, 5, 10)
    assert logs["ctkd_lambda"] == pytest.approx(0.5) and logs["ctkd_temperature"] > 1.0
    assert "raw_temperature" in loss.state_dict()


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_neg_inf_columns_equal_sliced_vocabulary(name):
    s, t = _logits(7, v=V + 3)
    s[:, V:], t[:, V:] = -math.inf, -math.inf
    labels = torch.randint(0, V, (N,), generator=torch.Generator().manual_seed(2))
    sp = s.clone().requires_grad_()
    sl = s[:, :V].clone().requires_grad_()
    vp, _ = _call(name, sp, t, labels=labels)
    vs, _ = _call(name, sl, t[:, :V].clone(), labels=labels)
    (vp + vs).backward()
    assert torch.isfinite(vp) and float(vp) == pytest.approx(float(vs), rel=1e-5, abs=1e-7)
    torch.testing.assert_close(sp.grad[:, :V], sl.grad)
    assert float(sp.grad[:, V:].abs().max()) == 0.0


def _probs(s, t, temperature=1.0):
    return torch.softmax(t.double() / temperature, -1), torch.softmax(s.double() / temperature, -1)


def _kl(a, b):
    return (a * (a.log() - b.log())).sum(-1)


def test_brute_force_definitions():
    s, t = _logits(8)
    p, q = _probs(s, t, 2.0)
    checks = [
        (forward_kl(s, t, temperature=2.0), _kl(p, q)),
        (reverse_kl(s, t, temperature=2.0), _kl(q, p)),
        (total_variation(s, t, temperature=2.0), 0.5 * (p - q).abs().sum(-1)),
    ]
    p, q = _probs(s, t)
    m = 0.3 * p + 0.7 * q
    checks += [
        (generalized_jsd(s, t, 0.3), 0.3 * _kl(p, m) + 0.7 * _kl(q, m)),
        (skew_forward_kl(s, t, 0.2), _kl(p, 0.2 * p + 0.8 * q)),
        (skew_reverse_kl(s, t, 0.2), _kl(q, 0.8 * p + 0.2 * q)),
        (skew_forward_kl(s, t, 0.0), _kl(p, q)),
    ]
    for got, want in checks:
        assert float(got) == pytest.approx(float(want.mean()), rel=1e-5)


def test_adaptive_kl_matches_paper_definition():
    s, t = _logits(9)
    p, q = _probs(s, t)
    mu, want = 0.5, []
    for i in range(N):
        order = sorted(range(V), key=lambda j: -float(p[i, j]))
        head, cum = set(), 0.0
        for rank, j in enumerate(order):
            cum += float(p[i, j])
            if rank == 0 or cum <= mu:
                head.add(j)
        gap = (p[i] - q[i]).abs()
        g_head = sum(float(gap[j]) for j in head)
        g_tail = float(gap.sum()) - g_head
        fkl, rkl = float(_kl(p[i], q[i])), float(_kl(q[i], p[i]))
        want.append((g_head * fkl + g_tail * rkl) / (g_head + g_tail))
    assert float(adaptive_kl(s, t, mu)) == pytest.approx(sum(want) / N, rel=1e-5)


def test_dkd_matches_definition():
    s, t = _logits(10)
    labels = torch.randint(0, V, (N,), generator=torch.Generator().manual_seed(3))
    temp = 2.0
    p, q = _probs(s, t, temp)
    want = []
    for i in range(N):
        y = int(labels[i])
        bp = torch.stack([p[i, y], 1 - p[i, y]])
        bq = torch.stack([q[i, y], 1 - q[i, y]])
        keep = [j for j in range(V) if j != y]
        ph, qh = p[i, keep] / p[i, keep].sum(), q[i, keep] / q[i, keep].sum()
        want.append((1.0 * _kl(bp, bq) + 0.5 * _kl(ph, qh)) * temp**2)
    got = dkd_loss(s, t, labels, alpha=1.0, beta=0.5, temperature=temp)
    assert float(got) == pytest.approx(float(torch.stack(want).mean()), rel=1e-5)


def test_ctkd_value_and_reversed_temperature_gradient():
    s, t = _logits(11)
    loss = get_loss("ctkd")
    tau = 1.0 + 20.0 * torch.sigmoid(torch.tensor(1.0, dtype=torch.float64))
    p, q = _probs(s, t, float(tau))
    val = loss(s, t)
    assert float(val) == pytest.approx(float(_kl(p, q).mean() * tau**2), rel=1e-5)
    val.backward()
    raw = torch.tensor(1.0, requires_grad=True)
    tau_ref = 1.0 + 20.0 * torch.sigmoid(raw)
    (F.kl_div(F.log_softmax(s / tau_ref, -1), F.softmax(t / tau_ref, -1), reduction="sum") / N * tau_ref**2).backward()
    assert float(loss.raw_temperature.grad) == pytest.approx(-float(raw.grad), rel=2e-3)
    loss.set_progress(0, 10)
    assert loss.grl_lambda == 0.0 and loss.set_progress(5, 10) == pytest.approx(0.5)


def test_three_dim_inputs_and_mask():
    s, t = _logits(12, n=6)
    mask = torch.tensor([[1, 0, 1], [1, 1, 0]], dtype=torch.bool)
    got = forward_kl(s.view(2, 3, V), t.view(2, 3, V), mask)
    assert float(got) == pytest.approx(float(forward_kl(s[mask.view(-1)], t[mask.view(-1)])), rel=1e-6)


def test_stats_and_signal_key():
    s, t = _logits(13)
    loss = get_loss("taid", t_start=0.2, signal="kl")
    assert loss.signal_key == "taid_kl" and get_loss("taid").signal_key == "taid_ce"
    val = loss(s, t, reduction="sum")
    p = torch.softmax(0.8 * s.double() + 0.2 * t.double(), -1)
    entropy = -(p * p.log()).sum()
    assert float(loss.stats["taid_kl"]) == pytest.approx(float(val), rel=1e-6)
    assert float(loss.stats["taid_ce"]) == pytest.approx(float(val) + float(entropy), rel=1e-5)
    assert get_loss("fkl").stats == {} and get_loss("sft").needs_teacher is False


def test_sft_is_cross_entropy():
    s, _ = _logits(14)
    labels = torch.randint(0, V, (N,))
    assert float(get_loss("sft")(s, None, labels=labels)) == pytest.approx(float(F.cross_entropy(s, labels)))


@pytest.mark.parametrize("call, match", [
    (lambda s, t: forward_kl(s, t[:, :-1]), "teacher_logits"),
    (lambda s, t: forward_kl(s, t.masked_fill(t > 1, math.nan)), "NaN"),
    (lambda s, t: forward_kl(s, t.masked_fill(t > 1, math.inf)), r"\+inf"),
    (lambda s, t: taid_loss(s, t, 1.5), "t must be"),
    (lambda s, t: taid_loss(s, t, -0.1), "t must be"),
    (lambda s, t: forward_kl(s, t, torch.ones(3, dtype=torch.bool)), "mask"),
    (lambda s, t: forward_kl(s, t, temperature=0.0), "temperature"),
    (lambda s, t: forward_kl(s, t, reduction="none"), "reduction"),
    (lambda s, t: generalized_jsd(s, t, 1.0), "beta"),
    (lambda s, t: skew_forward_kl(s, t, 1.5), "alpha"),
    (lambda s, t: get_loss("kl"), "valid names: sft, fkl, rkl, tvd, gjsd, skew_fkl, skew_rkl, akl, ctkd, dkd, taid"),
    (lambda s, t: get_loss("gjsd", alpha=0.1), "takes no option .alpha."),
    (lambda s, t: get_loss("taid", t_start=0.9, t_end=0.5), "t_start"),
    (lambda s, t: get_loss("taid", alpha=2.0), "alpha"),
    (lambda s, t: get_loss("taid", signal="loss"), "signal"),
    (lambda s, t: get_loss("dkd")(s, t), "labels"),
    (lambda s, t: get_loss("fkl")(s, None), "teacher_logits"),
    (lambda s, t: get_loss("sft", temperature=2.0), "temperature"),
    (lambda s, t: get_loss("sft")(s, None, labels=torch.full((N,), V)), "labels"),
])
def test_validation_errors(call, match):
    s, t = _logits(15)
    with pytest.raises(ValueError, match=match):
        call(s, t)
