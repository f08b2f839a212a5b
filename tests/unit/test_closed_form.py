"""The baselines' closed-form chunk kernels (losses/closed_form.py) against autograd through their
own full-logits definitions (``DistillLoss.value_and_grad``, the generic path), in float64."""

import pytest
import torch

from taid_vlm.losses import closed_form, get_loss
from taid_vlm.losses.base import DistillLoss

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
    want_v, _, want_g, _ = DistillLoss.value_and_grad(loss, s, t.clone(), None, True)
    for logprobs in (False, True):  # raw logits, or log-probs as the fused loop passes them
        student = torch.log_softmax(s, -1) if logprobs else s
        v, extras, grad, pg = loss.value_and_grad(student, t.clone(), None, True, logprobs)
        torch.testing.assert_close(v, want_v.detach(), atol=1e-10, rtol=1e-9)
        torch.testing.assert_close(grad, want_g, atol=1e-10, rtol=1e-9)
        assert pg == []
        v2, _, none, _ = loss.value_and_grad(student, t.clone(), None, False, logprobs)
        assert none is None
        torch.testing.assert_close(v2, v, atol=0, rtol=0)


def test_every_fusable_baseline_but_two_has_a_closed_form():
    """ctkd (a learnable temperature behind a gradient reversal) and dkd (label-dependent split of the
    vocabulary) keep autograd; a new loss without a closed form falls to it too, still correct."""
    from taid_vlm.losses import LOSS_NAMES

    generic = sorted(n for n in LOSS_NAMES
                     if type(get_loss(n)).value_and_grad is DistillLoss.value_and_grad and get_loss(n).needs_teacher)
    assert generic == ["ctkd", "dkd"]
