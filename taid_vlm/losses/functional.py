"""Functional losses: validation + fp32 + temperature + per-token divergence + reduction.

All take ``student_logits`` and ``teacher_logits`` of shape ``[N, V]`` or ``[B, T, V]`` (any float
dtype; -inf marks excluded vocabulary columns), ``mask`` of the leading shape (None = all valid),
and return a scalar fp32 tensor: the mean over valid tokens (``reduction="mean"``) or their sum
(``"sum"``), 0 when no token is valid. Temperature divides both logits; no T^2 factor.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from taid_vlm.losses import divergences as D
from taid_vlm.losses._validate import check_range, check_reduction, check_temperature, prepare, reduce


def _apply(fn: Callable[..., torch.Tensor], student_logits: torch.Tensor, teacher_logits: torch.Tensor,
           mask: torch.Tensor | None, temperature: float, reduction: str, who: str,
           labels: torch.Tensor | None = None, **kw) -> torch.Tensor:
    temperature = check_temperature(temperature)
    check_reduction(reduction)
    s, t, lab, n = prepare(student_logits, teacher_logits, mask, labels, needs_teacher=True,
                           needs_labels=labels is not None, who=who)
    if temperature != 1.0:
        s, t = s / temperature, t / temperature
    per = fn(s, t, lab, **kw) if labels is not None else fn(s, t, **kw)
    return reduce(per, n, reduction)


def forward_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor | None = None,
               temperature: float = 1.0, *, reduction: str = "mean") -> torch.Tensor:
    """KL(p_teacher || q_student) = sum p (log p - log q); >= 0, 0 for identical inputs."""
    return _apply(D.fkl_per_token, student_logits, teacher_logits, mask, temperature, reduction, "forward_kl")


def reverse_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor | None = None,
               temperature: float = 1.0, *, reduction: str = "mean") -> torch.Tensor:
    """KL(q_student || p_teacher)."""
    return _apply(D.rkl_per_token, student_logits, teacher_logits, mask, temperature, reduction, "reverse_kl")


def total_variation(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                    mask: torch.Tensor | None = None, temperature: float = 1.0, *,
                    reduction: str = "mean") -> torch.Tensor:
    """0.5 * sum |p - q|."""
    return _apply(D.tvd_per_token, student_logits, teacher_logits, mask, temperature, reduction,
                  "total_variation")


def generalized_jsd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, beta: float = 0.5,
                    mask: torch.Tensor | None = None, temperature: float = 1.0, *,
                    reduction: str = "mean") -> torch.Tensor:
    """GKD: m = beta*p + (1-beta)*q, beta*KL(p||m) + (1-beta)*KL(q||m); beta in (0, 1), 0.5 = JSD."""
    beta = check_range("beta", beta, 0.0, 1.0, lo_open=True, hi_open=True)
    return _apply(D.gjsd_per_token, student_logits, teacher_logits, mask, temperature, reduction,
                  "generalized_jsd", beta=beta)


def skew_forward_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, alpha: float = 0.1,
                    mask: torch.Tensor | None = None, temperature: float = 1.0, *,
                    reduction: str = "mean") -> torch.Tensor:
    """DistiLLM: KL(p || alpha*p + (1-alpha)*q), alpha in [0, 1] (0 = forward KL)."""
    alpha = check_range("alpha", alpha, 0.0, 1.0)
    return _apply(D.skew_fkl_per_token, student_logits, teacher_logits, mask, temperature, reduction,
                  "skew_forward_kl", alpha=alpha)


def skew_reverse_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, alpha: float = 0.1,
                    mask: torch.Tensor | None = None, temperature: float = 1.0, *,
                    reduction: str = "mean") -> torch.Tensor:
    """DistiLLM: KL(q || (1-alpha)*p + alpha*q), alpha in [0, 1] (0 = reverse KL)."""
    alpha = check_range("alpha", alpha, 0.0, 1.0)
    return _apply(D.skew_rkl_per_token, student_logits, teacher_logits, mask, temperature, reduction,
                  "skew_reverse_kl", alpha=alpha)


def adaptive_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mu: float = 0.5,
                mask: torch.Tensor | None = None, temperature: float = 1.0, *,
                reduction: str = "mean") -> torch.Tensor:
    """AKL (arXiv 2404.02657): head/tail-gap weighted forward + reverse KL; mu in (0, 1]."""
    mu = check_range("mu", mu, 0.0, 1.0, lo_open=True)
    return _apply(D.akl_per_token, student_logits, teacher_logits, mask, temperature, reduction,
                  "adaptive_kl", mu=mu)


def dkd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
             mask: torch.Tensor | None = None, alpha: float = 1.0, beta: float = 0.5, temperature: float = 1.0,
             *, reduction: str = "mean") -> torch.Tensor:
    """Decoupled KD: (alpha * TCKD + beta * NCKD) * T^2 with the target classes ``labels`` (leading shape)."""
    alpha = check_range("alpha", alpha, 0.0, float("inf"), hi_open=True)
    beta = check_range("beta", beta, 0.0, float("inf"), hi_open=True)
    scale = check_temperature(temperature) ** 2
    return scale * _apply(D.dkd_per_token, student_logits, teacher_logits, mask, temperature, reduction,
                          "dkd_loss", labels=labels, alpha=alpha, beta=beta)
