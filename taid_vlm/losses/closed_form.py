"""Closed-form values and student-logit gradients of the baseline divergences, for the fused path.

The fused loop's default for a loss without its own ``value_and_grad`` is autograd over the
chunk's ``[C, V]`` logits, which keeps several ``[C, V]`` temporaries for backward (2-4x the
floor's memory at V = 32,000 in ``eval/bench_step.py``). Every divergence here depends on the
student only through q = softmax(s), so with g = d L / d q per row the gradient is the softmax
backward ``q * (g - <q, g>)``; the values and g below are worked out by hand and checked against
autograd in float64 (``tests/unit/test_closed_form.py``; ``test_fused_losses.py`` runs every loss
fused vs full).

Each kernel works on ``ROW_BLOCK`` rows at a time, so its temporaries are ``ROW_BLOCK x V``
whatever the chunk, and writes the gradient into the teacher's buffer (which the fused loop hands
over as a work buffer). Inputs as in ``DistillLoss.value_and_grad``: ``s [C, V]`` student logits or
log-probs (read only), ``t [C, V]`` raw teacher logits (overwritten), the temperature T.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from taid_vlm.losses.divergences import akl_head_tail, akl_weights
from taid_vlm.losses.taid import ROW_BLOCK, _rowdot


def _block_logprobs(s: torch.Tensor, t: torch.Tensor, rows: slice, temperature: float,
                    student_logprobs: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log q, log p)`` of a row block at the temperature: log q a new ``[R, V]`` (or ``s``'s
    rows themselves when they are log-probs at T = 1), log p in place in ``t``'s rows."""
    if student_logprobs and temperature == 1.0:
        lq = s[rows]
    else:
        lq = torch.log_softmax(s[rows] if temperature == 1.0 else s[rows] / temperature, -1)
    tb = t[rows] if temperature == 1.0 else t[rows].div_(temperature)
    return lq, torch.log_softmax(tb, -1, out=tb)


def _log_mix_probs(a: torch.Tensor, b: torch.Tensor, w: float) -> torch.Tensor:
    """log(w * a + (1 - w) * b) from the probabilities (one log per value; the full path's
    ``divergences._log_mix`` works in log space, two transcendentals per value). Where both vanish
    the mixture is clamped to the smallest normal float: every term there is multiplied by a or b."""
    return (a * w).add_(b, alpha=1.0 - w).clamp_min_(torch.finfo(a.dtype).tiny).log_()


# A row-block body: (lq, q, lp) -> (values [R], g [R, V]) with g = d L / d q up to a per-row
# constant, or (values, g, direct) with a part ``direct`` that is already d L / d s; lp ([R, V], a
# view of the teacher's buffer) may be modified, lq and q may not.
Body = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, ...]]


def run_blocks(s: torch.Tensor, t: torch.Tensor, temperature: float, student_logprobs: bool,
               need_grad: bool, body: Body) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Values ``[C]`` and, with ``need_grad``, the gradient ``[C, V]`` w.r.t. the student logits
    (in ``t``'s buffer) of a divergence given by ``body`` per row block."""
    vals = s.new_empty(s.shape[0])
    for a in range(0, s.shape[0], ROW_BLOCK):
        rows = slice(a, a + ROW_BLOCK)
        lq, lp = _block_logprobs(s, t, rows, temperature, student_logprobs)
        q = lq.exp()
        v, g, *direct = body(lq, q, lp)
        vals[rows] = v
        if need_grad:  # softmax backward, then the 1/T of s / T; written where the teacher's rows were
            g = g.sub_(_rowdot(q, g).unsqueeze(1)).mul_(q)
            if direct:
                g.add_(direct[0])
            t[rows].copy_(g if temperature == 1.0 else g.div_(temperature))
    return vals, (t if need_grad else None)


def rkl(lq, q, lp):
    """KL(q || p): L = sum q (lq - lp); dL/dq = lq - lp (+ 1, a constant)."""
    g = lp.neg_().add_(lq)
    return _rowdot(q, g), g


def zero(lq, q, lp):
    """A skew of 1 compares a distribution with itself: L = 0, g = 0."""
    return lq.new_zeros(lq.shape[0]), lp.zero_()


def tvd(lq, q, lp):
    """0.5 * sum |p - q|; dL/dq = 0.5 * sign(q - p)."""
    d = lp.exp_().neg_().add_(q)  # q - p
    return 0.5 * d.abs().sum(-1), d.sign_().mul_(0.5)


def gjsd(beta: float):
    """beta KL(p || m) + (1 - beta) KL(q || m), m = beta p + (1 - beta) q; dL/dq = (1 - beta)(lq - lm)."""
    def body(lq, q, lp):
        p = lp.exp()
        lm = _log_mix_probs(p, q, beta)
        val = beta * _rowdot(p, lp.sub_(lm)) + (1.0 - beta) * _rowdot(q, lq - lm)
        return val, lm.neg_().add_(lq).mul_(1.0 - beta)
    return body


def skew_fkl(alpha: float):
    """KL(p || m), m = alpha p + (1 - alpha) q; dL/dq = -(1 - alpha) p / m."""
    def body(lq, q, lp):
        p = lp.exp()
        lm = _log_mix_probs(p, q, alpha)
        val = _rowdot(p, lp.sub_(lm))  # lp - lm, in place: p / m = exp(lp - lm)
        return val, lp.exp_().mul_(alpha - 1.0)
    return body


def skew_rkl(alpha: float):
    """KL(q || m), m = (1 - alpha) p + alpha q; dL/dq = lq - lm - alpha q / m (+ 1)."""
    def body(lq, q, lp):
        lm = _log_mix_probs(lp.exp_(), q, 1.0 - alpha)
        d = lm.neg_().add_(lq)  # lq - lm
        val = _rowdot(q, d)
        return val, d.sub_(torch.exp(d).mul_(alpha))
    return body


def _akl_weights(p: torch.Tensor, q: torch.Tensor, mu: float, k: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """``divergences.akl_weights``, sorting only the top k when that suffices: the head (the
    teacher's most likely tokens while their cumulative probability stays <= mu) lies inside the
    top k as soon as the top k's sum exceeds mu, as for a trained teacher's peaked rows. The same
    prefix sums as the full sort, so the same head (ties in p aside, which the full path orders
    arbitrarily too). A block with a flatter row (a random-weight teacher's) sorts whole rows."""
    if k < p.shape[-1]:
        top, order = p.topk(k, -1)
        cum = top.cumsum(-1)
        if bool((cum[:, -1] > mu).all()):
            head = cum <= mu
            head[:, 0] = True
            return akl_head_tail(((top - q.gather(1, order)).abs() * head).sum(-1), (p - q).abs().sum(-1))
    return akl_weights(p, q, mu)


def akl(mu: float):
    """w_head KL(p || q) + w_tail KL(q || p), weights from ``akl_weights`` (no gradient). The reverse
    part goes through g = w_tail (lq - lp); the forward part's g = -w_head p / q is unstable where q
    underflows, so it comes back as its gradient w.r.t. s directly: w_head (q - p)."""
    def body(lq, q, lp):
        p = lp.exp()
        w_head, w_tail = _akl_weights(p, q, mu)
        d = lp.neg_().add_(lq)  # lq - lp
        val = w_head * -_rowdot(p, d) + w_tail * _rowdot(q, d)
        return val, d.mul_(w_tail.unsqueeze(1)), p.neg_().add_(q).mul_(w_head.unsqueeze(1))
    return body


def ctkd(s: torch.Tensor, t: torch.Tensor, tau: float, need_grad: bool, student_logprobs: bool
         ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """CTKD's ``tau^2 KL(p_tau || q_tau)`` per row ``[C]``, its gradient w.r.t. the student logits
    (``tau (q_tau - p_tau)``, in ``t``'s buffer) and ``sum_rows d value / d tau`` (0-d).

    d KL / d tau: with lp, lq the tempered log-probs, d lp / d tau = -(lp - E_p[lp]) / tau (and alike
    for q), so d KL / d tau = -(E_p[(lp - E_p[lp]) (lp - lq)] - (E_p[lq] - E_q[lq])) / tau.
    Row blocks are computed in float64: at CTKD's temperatures (up to 21) the tempered log-probs
    differ by about 1e-3 of their size, so fp32 log-probs would put 3e-4 relative error into KL and
    into tau's gradient, where its two terms also cancel.
    """
    del student_logprobs  # log-probs or logits: log_softmax(s / tau) is the same
    vals, dtau = s.new_empty(s.shape[0]), s.new_zeros((), dtype=torch.float64)
    for a in range(0, s.shape[0], ROW_BLOCK):
        rows = slice(a, a + ROW_BLOCK)
        lq = torch.log_softmax(s[rows].double() / tau, -1)
        lp = torch.log_softmax(t[rows].double() / tau, -1)
        p = lp.exp()
        d = lp - lq
        kl = _rowdot(p, d)
        vals[rows] = kl * tau * tau
        if not need_grad:
            continue
        q = lq.exp()
        spread = _rowdot(p, d.mul_(lp)) - _rowdot(p, lp) * kl  # E_p[(lp - E_p lp)(lp - lq)]
        dkl = -(spread - (_rowdot(p, lq) - _rowdot(q, lq))) / tau
        dtau += (2.0 * tau * kl + tau * tau * dkl).sum()
        t[rows].copy_(q.sub_(p).mul_(tau))
    return vals, (t if need_grad else None), (dtau.to(s.dtype) if need_grad else None)


def dkd(s: torch.Tensor, t: torch.Tensor, labels: torch.Tensor, alpha: float, beta: float, temperature: float,
        need_grad: bool, student_logprobs: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """DKD's ``(alpha TCKD + beta NCKD) T^2`` per row ``[C]`` and its gradient w.r.t. the student
    logits (in ``t``'s buffer). With g the target, q_g its probability and q^ = softmax over the
    other tokens: d TCKD / d s_g = q_g - p_g, d TCKD / d s_j = q^_j (p_g - q_g) for j != g;
    d NCKD / d s_j = q^_j - p^_j for j != g, 0 for g; times T for the tempered logits and T^2."""
    vals = s.new_empty(s.shape[0])
    for a in range(0, s.shape[0], ROW_BLOCK):
        rows = slice(a, a + ROW_BLOCK)
        idx = labels[rows].unsqueeze(1)
        lq, lp = _block_logprobs(s, t, rows, temperature, student_logprobs)
        lq_g, lp_g = lq.gather(1, idx), lp.gather(1, idx)
        # log(1 - q_g) and log(1 - p_g) from the other tokens (stable where q_g is close to 1)
        lq_r = torch.logsumexp(lq.scatter(1, idx, float("-inf")), -1, keepdim=True)
        lp_r = torch.logsumexp(lp.scatter(1, idx, float("-inf")), -1, keepdim=True)
        tckd = lp_g.exp() * (lp_g - lq_g) + lp_r.exp() * (lp_r - lq_r)
        lq_hat = lq - lq_r  # log q^ (the target column is ignored below)
        lp_hat = lp.sub_(lp_r)  # log p^, in place
        p_hat = lp_hat.exp().scatter_(1, idx, 0.0)
        nckd = _rowdot(p_hat, lp_hat - lq_hat)
        vals[rows] = ((alpha * tckd + beta * nckd.unsqueeze(1)) * temperature**2).squeeze(1)
        if not need_grad:
            continue
        q_hat = lq_hat.exp_().scatter_(1, idx, 0.0)
        q_g, p_g = lq_g.exp(), lp_g.exp()
        grad = q_hat.mul_(alpha * (p_g - q_g) + beta).sub_(p_hat.mul_(beta))
        grad.scatter_(1, idx, alpha * (q_g - p_g))
        t[rows].copy_(grad.mul_(temperature))
    return vals, (t if need_grad else None)
