"""TAID's per-token objective: KL from the interpolated target p_t to the student q.

p_t = softmax((1 - t) * stopgrad(s) + t * teacher) interpolates in logit space with the student
detached, so d KL(p_t || q) / d s = q - p_t per token.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from taid_vlm.losses._compiled import taid_rows
from taid_vlm.losses._validate import check_range, check_reduction, check_temperature, prepare, reduce


def taid_per_token(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                   t: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token TAID values with autograd.

    Args:
        student_logits: ``[N, V]`` fp32 (tempered, sanitised); teacher_logits: same, teacher.
        t: interpolation parameter in [0, 1].
    Returns:
        ``(kl [N], ce [N])``: KL(p_t || q) (carries grad) and the cross-entropy H(p_t, q) =
        KL + H(p_t) (detached; the official code's schedule signal).
    """
    with torch.no_grad():
        lp = F.log_softmax((1.0 - t) * student_logits.detach() + t * teacher_logits, dim=-1)
        p = lp.exp()
    lq = F.log_softmax(student_logits, dim=-1)
    kl = (p * (lp - lq)).sum(-1)
    ce = -(p * lq.detach()).sum(-1)
    return kl, ce


def _rowdot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    # Row-wise dot product through bmm: no [N, V] temporary, unlike (a * b).sum(-1).
    return torch.bmm(a.unsqueeze(1), b.unsqueeze(2)).view(-1)


ROW_BLOCK = 16  # rows per block of the kernel's one temporary (p_t): 16 x V, reused from the heap


def taid_value_and_grad(student_logits: torch.Tensor, teacher_logits: torch.Tensor, t: float,
                        temperature: float = 1.0, need_grad: bool = True, student_logprobs: bool = False
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Closed-form TAID values and gradient (fused path) with no new ``[C, V]`` buffer when
    ``student_logprobs`` (one otherwise). Large chunks run the torch.compile'd kernel of
    ``_compiled.py``; small ones (and any machine where compiling fails) the eager one here: row
    kernels (log_softmax), in-place updates of the teacher's buffer, p_t in blocks of
    ``ROW_BLOCK`` rows. Both compute the same closed form.

    Args:
        student_logits: ``[C, V]`` fp32 raw student logits (left unchanged).
        teacher_logits: ``[C, V]`` fp32 raw teacher logits, OVERWRITTEN (used as a work buffer).
        t: interpolation parameter; t = 1 gives forward KL (see ``forward_kl_value_and_grad``).
        temperature: both sides are divided by it before the softmax.
        student_logprobs: ``student_logits`` are log-probs already (rows sum to 1 after exp), so
            with temperature 1 they are used as they are.
    Returns:
        ``(kl [C], ce [C], grad [C, V] | None)`` with grad = d sum(kl) / d student_logits = (q - p_t) / T;
        grad lives in ``teacher_logits``' buffer.
    """
    if student_logprobs and temperature == 1.0:
        lq = student_logits
    else:
        lq = torch.log_softmax(student_logits if temperature == 1.0 else student_logits / temperature, -1)
    fast = taid_rows(lq, teacher_logits, t, temperature, need_grad)
    if fast is not None:
        return (*fast, teacher_logits if need_grad else None)
    mix = teacher_logits
    if t != 1.0:
        mix.lerp_(student_logits, 1.0 - t)  # t * teacher + (1 - t) * student
    if temperature != 1.0:
        mix.div_(temperature)
    lp = torch.log_softmax(mix, -1, out=mix)  # log p_t, in place
    kl, ce = lq.new_empty(lq.shape[0]), lq.new_empty(lq.shape[0])
    for a in range(0, lq.shape[0], ROW_BLOCK):
        rows = slice(a, a + ROW_BLOCK)
        p = lp[rows].exp()
        ce[rows] = -_rowdot(p, lq[rows])
        kl[rows] = _rowdot(p, lp[rows].sub_(lq[rows]))  # log p_t - log q, in place
        if need_grad:
            torch.exp(lq[rows], out=mix[rows]).sub_(p)  # q - p_t, where log p_t was
        del p
    if not need_grad:
        return kl, ce, None
    grad = mix
    if temperature != 1.0:
        grad.div_(temperature)
    return kl, ce, grad


def forward_kl_value_and_grad(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                              temperature: float = 1.0, need_grad: bool = True, student_logprobs: bool = False
                              ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Closed-form forward KL(p || q) values ``[C]`` and gradient ``(q - p) / T`` ``[C, V]``.

    TAID's target at t = 1 is the teacher itself, so this is TAID's kernel with t = 1; the same
    buffer contract holds (``teacher_logits`` is overwritten).
    """
    kl, _, grad = taid_value_and_grad(student_logits, teacher_logits, 1.0, temperature, need_grad, student_logprobs)
    return kl, grad


def taid_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, t: float,
              mask: torch.Tensor | None = None, temperature: float = 1.0, *,
              reduction: str = "mean") -> torch.Tensor:
    """TAID loss: token-mean of KL(p_t || softmax(s)), p_t = softmax((1-t) * stopgrad(s) + t * teacher).

    Args:
        student_logits, teacher_logits: ``[N, V]`` or ``[B, T, V]``, any float dtype (fp32 inside);
            -inf marks excluded vocabulary columns.
        t: interpolation parameter in [0, 1] (0: zero loss and gradient, 1: forward KL).
        mask: leading shape, None = all valid.
        temperature: divides both logits before the softmax.
        reduction: "mean" over valid tokens or "sum".
    Returns:
        scalar fp32; d value / d s = (softmax(s) - p_t) / N_valid for "mean".
    """
    t = check_range("t", t, 0.0, 1.0)
    temperature = check_temperature(temperature)
    check_reduction(reduction)
    s, tl, _, n = prepare(student_logits, teacher_logits, mask, None, needs_teacher=True, needs_labels=False,
                          who="taid_loss")
    if temperature != 1.0:
        s, tl = s / temperature, tl / temperature
    kl, _ = taid_per_token(s, tl, t)
    return reduce(kl, n, reduction)
