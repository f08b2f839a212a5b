"""Per-token divergences between a teacher distribution p and a student distribution q.

Every function here takes fp32 logits ``s`` (student) and ``t`` (teacher) of shape ``[N, V]``,
already divided by the temperature and with excluded columns sanitised (see ``_validate``), and
returns the divergence of each row, ``[N]``. No reduction, no masking: ``functional.py`` and the
loss modules do that (STYLE.md 2: per-token divergence separate from the reduction).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from taid_vlm.losses._validate import NEG_FILL


def _lsm(x: torch.Tensor) -> torch.Tensor:
    return F.log_softmax(x, dim=-1)


def _kl_from_logprobs(la: torch.Tensor, lb: torch.Tensor) -> torch.Tensor:
    """KL(a || b) per row from log-probabilities ``[N, V]`` -> ``[N]``."""
    return (la.exp() * (la - lb)).sum(-1)


def _log_mix(la: torch.Tensor, lb: torch.Tensor, w: float) -> torch.Tensor:
    """log(w * a + (1 - w) * b) for 0 < w < 1, computed in log space (no log 0)."""
    return torch.logaddexp(la + math.log(w), lb + math.log1p(-w))


def fkl_per_token(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Forward KL(p || q), ``[N, V] x2 -> [N]``."""
    return _kl_from_logprobs(_lsm(t), _lsm(s))


def rkl_per_token(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Reverse KL(q || p), ``[N, V] x2 -> [N]``."""
    return _kl_from_logprobs(_lsm(s), _lsm(t))


def tvd_per_token(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Total variation 0.5 * sum |p - q|, ``[N, V] x2 -> [N]``."""
    return 0.5 * (F.softmax(t, dim=-1) - F.softmax(s, dim=-1)).abs().sum(-1)


def gjsd_per_token(s: torch.Tensor, t: torch.Tensor, beta: float) -> torch.Tensor:
    """GKD's generalized JSD: m = beta*p + (1-beta)*q; beta*KL(p||m) + (1-beta)*KL(q||m). ``[N]``."""
    lp, lq = _lsm(t), _lsm(s)
    lm = _log_mix(lp, lq, beta)
    return beta * _kl_from_logprobs(lp, lm) + (1.0 - beta) * _kl_from_logprobs(lq, lm)


def skew_fkl_per_token(s: torch.Tensor, t: torch.Tensor, alpha: float) -> torch.Tensor:
    """DistiLLM skew forward KL: KL(p || alpha*p + (1-alpha)*q), ``[N]``."""
    if alpha == 0.0:
        return fkl_per_token(s, t)
    if alpha == 1.0:  # KL(p || p): keep the graph so that callers can still backpropagate
        return (s * 0.0).sum(-1)
    lp, lq = _lsm(t), _lsm(s)
    return _kl_from_logprobs(lp, _log_mix(lp, lq, alpha))


def skew_rkl_per_token(s: torch.Tensor, t: torch.Tensor, alpha: float) -> torch.Tensor:
    """DistiLLM skew reverse KL: KL(q || (1-alpha)*p + alpha*q), ``[N]``."""
    if alpha == 0.0:
        return rkl_per_token(s, t)
    if alpha == 1.0:
        return (s * 0.0).sum(-1)
    lp, lq = _lsm(t), _lsm(s)
    return _kl_from_logprobs(lq, _log_mix(lp, lq, 1.0 - alpha))


def akl_weights(p: torch.Tensor, q: torch.Tensor, mu: float) -> tuple[torch.Tensor, torch.Tensor]:
    """AKL (arXiv 2404.02657) head/tail weights, no gradient.

    The head is the smallest set of the teacher's most likely tokens whose cumulative probability
    stays <= mu (always at least the top token); g_head / g_tail = sum |p - q| over head / tail.
    Returns ``(w_head [N], w_tail [N])`` = g_head / (g_head + g_tail), g_tail / (g_head + g_tail).
    """
    with torch.no_grad():
        p_sorted, order = p.sort(dim=-1, descending=True)
        head_sorted = p_sorted.cumsum(-1) <= mu
        head_sorted[:, 0] = True
        head = torch.zeros_like(head_sorted).scatter_(1, order, head_sorted)
        gap = (p - q).abs()
        return akl_head_tail((gap * head).sum(-1), gap.sum(-1))


def akl_head_tail(g_head: torch.Tensor, g_all: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(w_head, w_tail)`` ``[N]`` from the head's and the whole row's sum of |p - q| ``[N]``."""
    denom = g_all.clamp_min(1e-12)  # identical rows: both KLs are 0, any finite weight will do
    return g_head / denom, (g_all - g_head) / denom


def akl_per_token(s: torch.Tensor, t: torch.Tensor, mu: float) -> torch.Tensor:
    """Adaptive KL: w_head * KL(p||q) + w_tail * KL(q||p) with weights from ``akl_weights``. ``[N]``."""
    lp, lq = _lsm(t), _lsm(s)
    w_head, w_tail = akl_weights(lp.exp(), lq.detach().exp(), mu)
    return w_head * _kl_from_logprobs(lp, lq) + w_tail * _kl_from_logprobs(lq, lp)


def _drop_target(x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return x.scatter(1, labels.unsqueeze(1), NEG_FILL)


def dkd_per_token(s: torch.Tensor, t: torch.Tensor, labels: torch.Tensor, alpha: float,
                  beta: float) -> torch.Tensor:
    """Decoupled KD (arXiv 2203.08679): alpha * TCKD + beta * NCKD per row (no T^2 here).

    TCKD = KL of the binary (target, rest) distributions; NCKD = KL(p_hat || q_hat) over the
    non-target tokens renormalised. ``s, t [N, V]``, ``labels [N]`` target ids -> ``[N]``.
    """
    idx = labels.unsqueeze(1)
    s_rest, t_rest = _drop_target(s, labels), _drop_target(t, labels)
    lse_s, lse_t = torch.logsumexp(s, -1), torch.logsumexp(t, -1)
    lq_tgt = s.gather(1, idx).squeeze(1) - lse_s
    lp_tgt = t.gather(1, idx).squeeze(1) - lse_t
    lq_rest = torch.logsumexp(s_rest, -1) - lse_s  # log(1 - q_target), stable
    lp_rest = torch.logsumexp(t_rest, -1) - lse_t
    tckd = lp_tgt.exp() * (lp_tgt - lq_tgt) + lp_rest.exp() * (lp_rest - lq_rest)
    nckd = _kl_from_logprobs(_lsm(t_rest), _lsm(s_rest))
    return alpha * tckd + beta * nckd


def ce_per_token(s: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the student on the target ids: ``[N, V], [N] -> [N]``."""
    return torch.logsumexp(s, -1) - s.gather(1, labels.unsqueeze(1)).squeeze(1)
