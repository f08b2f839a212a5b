"""The fused loss's chunk loop: per chunk of rows, logits -> loss -> gradients, in two reused buffers.

Every ``[C, V]`` tensor of the loop lives in one of two fp32 buffers allocated once per call (the
student's log-probs and the teacher's logits, which a closed-form loss overwrites with the
gradient): matrix products write into them (``out=``) and the row kernels work in place. A fresh
``[C, V]`` tensor per chunk would be page-faulted in again on every chunk on the CPU (glibc maps
blocks over 32 MiB afresh each time: at V = 151,936 that is every chunk of more than 55 rows),
which cost more than the arithmetic of the loss at the real vocabulary. The 1 / N_valid scale is
folded into the ``[C, H]`` side of the products instead of a pass over ``[C, V]``.
"""

from __future__ import annotations

import torch

from taid_vlm.losses._validate import NEG_FILL
from taid_vlm.losses.base import DistillLoss
from taid_vlm.losses.sparse import TopKLogprobs

FP32 = torch.float32


def _logits_into(out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``out [C, V]`` fp32 <- ``x [C, H] @ weight[V, H].T``, without a fresh ``[C, V]`` when fp32."""
    if x.dtype == FP32 and weight.dtype == FP32:
        return torch.mm(x, weight.T, out=out)
    return out.copy_(x @ weight.T)  # low precision: the product in its dtype, upcast into the buffer


def _teacher_into(out: torch.Tensor, a: int, b: int, th, tw, tl) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The chunk's teacher rows in ``out`` and, for precomputed logits with -inf, the ``[C, V]`` mask."""
    if tl is None:
        return _logits_into(out, th[a:b], tw), None
    sparse = isinstance(tl, TopKLogprobs)
    t = tl.dense(a, b, out=out) if sparse else out.copy_(tl[a:b])  # never an [N, V] teacher
    if sparse and not tl.has_neginf:
        return t, None
    neg = torch.isneginf(t)
    if not bool(neg.any()):
        return t, None
    t.masked_fill_(neg, NEG_FILL)
    return t, neg


def _add_lm_grad(grad: torch.Tensor | None, s: torch.Tensor, lab: torch.Tensor, lm_w: float) -> torch.Tensor:
    """``ratio * grad + lm_w * (softmax - onehot(lab))`` in one buffer (``s``: log-probs, consumed)."""
    q = s.exp_()
    if grad is None:
        grad = q.mul_(lm_w) if lm_w != 1.0 else q
    else:  # lerp: grad + lm_w * (q - grad), with ratio = 1 - lm_w, in one pass
        grad.lerp_(q, lm_w)
    return grad.scatter_add_(1, lab.unsqueeze(1), grad.new_full((lab.shape[0], 1), -lm_w))


def chunk_pass(cfg: dict, h, w, th, tw, tl, labels, want_grad: bool):
    """The chunk loop over ``h [n, H]`` (rows already selected) against ``w [V, H]``.

    Returns ``(sums {"distil", "lm"}, stat sums, grad_h [n, H] | None, grad_w [V, H] fp32 | None,
    loss-parameter grads)``, all already scaled by ``cfg["scale"]`` and the distil/lm weights.
    """
    loss: DistillLoss = cfg["loss"]
    ratio, scale, chunk = cfg["ratio"], cfg["scale"], cfg["chunk"]
    gh_need, gw_need, params = cfg["need_h"] and want_grad, cfg["need_w"] and want_grad, cfg["params"]
    n, vocab = h.shape[0], w.shape[0]
    distil_grad = want_grad and loss.needs_teacher and ratio > 0
    any_grad = gh_need or gw_need or (distil_grad and params)
    grad_h = torch.empty(n, h.shape[1], dtype=h.dtype, device=h.device) if gh_need else None
    grad_w = None  # [V, H] fp32, from the first chunk on
    pgrads = [torch.zeros_like(p, dtype=FP32) for p in params] if distil_grad else []
    sums = {"distil": h.new_zeros((), dtype=FP32), "lm": h.new_zeros((), dtype=FP32)}
    stats = {k: h.new_zeros((), dtype=FP32) for k in loss.stat_keys}
    rows = min(chunk, max(n, 1))
    s_buf = torch.empty(rows, vocab, dtype=FP32, device=h.device)
    t_buf = torch.empty(rows, vocab, dtype=FP32, device=h.device) if loss.needs_teacher else None
    for a in range(0, n, chunk):
        b = min(a + chunk, n)
        hc = h[a:b]
        # Student log-probs in place over the logits: every loss is invariant to a per-row shift of
        # the student logits, so log-probs stand in for logits (same values and gradients), and the
        # LM cross-entropy is a gather.
        s = torch.log_softmax(_logits_into(s_buf[: b - a], hc, w), -1, out=s_buf[: b - a])
        lab = None if labels is None else labels[a:b]
        if lab is not None:
            sums["lm"] -= s.gather(1, lab.unsqueeze(1)).sum()
        grad = None
        if loss.needs_teacher:
            t, neg = _teacher_into(t_buf[: b - a], a, b, th, tw, tl)
            # Columns the teacher excludes are excluded for the student too (as sanitize_pair does
            # on the full path); the LM cross-entropy above keeps the whole vocabulary.
            s_distil = s if neg is None else s.masked_fill(neg, NEG_FILL)
            vals, extras, grad, pg = loss.value_and_grad(s_distil, t, lab, distil_grad and any_grad,
                                                         student_logprobs=neg is None)
            del t, s_distil, neg
            sums["distil"] += vals.sum()
            for k in stats:
                stats[k] += extras[k].float().sum()
            for acc, g in zip(pgrads, pg or []):
                acc.add_(g.float(), alpha=ratio * scale)
        if not (gh_need or gw_need):
            continue
        if ratio < 1.0 or not loss.needs_teacher:  # LM cross-entropy part
            lm_w = 1.0 - ratio if loss.needs_teacher else 1.0
            grad = _add_lm_grad(grad, s, lab, lm_w)
        del s
        gd = grad.to(w.dtype)
        if gh_need:
            grad_h[a:b] = (gd @ w).mul_(scale).to(h.dtype)
        if gw_need:
            hs = hc.to(gd.dtype) * scale  # the 1/N scale on the [C, H] side
            if grad_w is None:  # the first chunk's product is the accumulator: no zero-filled [V, H]
                grad_w = (gd.T @ hs).float()
            elif gd.dtype == FP32:
                grad_w.addmm_(gd.T, hs)
            else:
                grad_w.add_((gd.T @ hs).float())
        del grad, gd
    if gw_need and grad_w is None:  # no valid row
        grad_w = torch.zeros(w.shape, dtype=FP32, device=w.device)
    return sums, stats, grad_h, grad_w, pgrads
