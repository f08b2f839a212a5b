"""The baselines' closed-form chunk kernels (losses/closed_form.py) against autograd through their
own full-logits definitions (``DistillLoss.value_and_grad``, the generic path), in float64."""

import pytest
import torch

from taid_vlm.losses import closed_form, get_loss
from taid_vlm.losses.base import DistillLoss


def _equals_autograd(loss, s, t, labels=None):
    """The closed form equals autograd (values, student gradient, loss-parameter gradients) for raw
    logits and for log-probs (as the fused loop passes them), and without a gradient the values
    alone; returns autograd's parameter gradients."""
    want_v, _, want_g, want_pg = DistillLoss.value_and_grad(loss, s, t.clone(), labels, True)
    for logprobs in (False, True):
        student = torch.log_softmax(s, -1) if logprobs else s
        v, _, grad, pg = loss.value_and_grad(student, t.clone(), labels, True, logprobs)
        torch.testing.assert_close(v, want_v.detach(), atol=1e-10, rtol=1e-9)
        torch.testing.assert_close(grad, want_g, atol=1e-10, rtol=1e-9)
        assert len(pg) == len(want_pg)
        for a, b in zip(pg, want_pg):
            torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-8)
        v2, _, none, _ = loss.value_and_grad(student, t.clone(), labels, False, logprobs)
        assert none is None
        torch.testing.assert_close(v2, v, atol=0, rtol=0)
    return want_pg


CASES = [("rkl", {}), ("tvd", {}), ("gjsd", {"beta": 0.5}), ("gjsd", {"beta": 0.1}),
         ("skew_fkl", {"alpha": 0.1}), ("skew_fkl", {"alpha": 0.0}), ("skew_fkl", {"alpha": 1.0}),
         ("skew_rkl", {"alpha": 0.3}), ("skew_rkl", {"alpha": 0.0}), ("skew_rkl", {"alpha": 1.0}),
         ("akl", {"mu": 0.5}), ("akl", {"mu": 1.0}), ("fkl", {})]


@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("name,opts", CASES)
def test_closed_form_equals_autograd(name, opts, temperature):
    loss = get_loss(name, temperature=temperature, **opts)
    assert type(loss).value_and_grad is not DistillLoss.value_and_grad  # a closed form, not autograd
    g = torch.Generator().manual_seed(11)
    rows = closed_form.ROW_BLOCK * 2 + 5  # three row blocks, the last one short
    s, t = torch.randn(rows, 40, generator=g, dtype=torch.float64) * 3, torch.randn(rows, 40, generator=g,
                                                                                  dtype=torch.float64) * 3
    t[:, :3] = -1e4  # columns the teacher (nearly) excludes: p underflows to 0 there
    assert _equals_autograd(loss, s, t) == []


@pytest.mark.parametrize("opts", [{}, {"init_temperature": 4.0, "lambda_max": 0.5}])
def test_ctkd_closed_form_equals_autograd_with_its_temperature_gradient(opts):
    loss = get_loss("ctkd", **opts).double()
    loss.set_progress(3, 10)  # lambda inside its curriculum
    g = torch.Generator().manual_seed(12)
    s, t = (torch.randn(37, 40, generator=g, dtype=torch.float64) * 3 for _ in range(2))
    want_pg = _equals_autograd(loss, s, t)
    assert abs(float(want_pg[0])) > 1e-6  # the temperature's gradient is really compared


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_dkd_closed_form_equals_autograd(temperature):
    loss = get_loss("dkd", alpha=1.5, beta=0.7, temperature=temperature)
    g = torch.Generator().manual_seed(13)
    s, t = (torch.randn(37, 40, generator=g, dtype=torch.float64) * 3 for _ in range(2))
    labels = torch.randint(0, 40, (37,), generator=g)
    s[0, labels[0]] += 12.0  # a target the student is nearly sure of: 1 - q_g from the other tokens
    _equals_autograd(loss, s, t, labels)


def test_every_distillation_loss_has_a_closed_form():
    """No built-in loss goes through autograd over [C, V] on the fused path any more (a user's loss
    without ``value_and_grad`` still does, and is still exact)."""
    from taid_vlm.losses import LOSS_NAMES

    generic = sorted(n for n in LOSS_NAMES
                     if type(get_loss(n)).value_and_grad is DistillLoss.value_and_grad and get_loss(n).needs_teacher)
    assert generic == []


@pytest.mark.parametrize("mu", [0.05, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("k", [2, 64, 2048])
def test_akl_head_from_topk_equals_the_full_sort(mu, k):
    from taid_vlm.losses.divergences import akl_weights

    g = torch.Generator().manual_seed(14)
    lp = torch.log_softmax(torch.randn(20, 3000, generator=g, dtype=torch.float64) * 2, -1)
    lq = torch.log_softmax(torch.randn(20, 3000, generator=g, dtype=torch.float64) * 2, -1)
    p, q = lp.exp(), lq.exp()
    want = akl_weights(p, q, mu)
    got = closed_form._akl_weights(p, q, mu, k=k)  # small k: the full sort; k = 2048 holds the head for mu < 1
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)
