"""Fused LM head + loss: logits, loss and gradients chunk by chunk, never an ``[N, V]`` tensor.

For each chunk of rows the student logits ``h_c @ W.T`` (and the teacher's), the loss and the
gradient w.r.t. the chunk logits are computed in the forward; the gradients w.r.t. the hidden
states and the LM-head weight are accumulated inside the loop, and backward only scales them by
the incoming gradient. Peak extra memory: the ``[V, H]`` weight gradient plus a few ``[chunk, V]``
buffers, whatever N is.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from taid_vlm.losses._chunk import chunk_pass
from taid_vlm.losses._validate import (
    check_finite_tensor,
    check_logits,
    check_range,
    check_reduction,
    flat_labels,
    flat_mask,
    valid_rows,
)
from taid_vlm.losses.base import DistillLoss
from taid_vlm.losses.registry import get_loss
from taid_vlm.losses.sparse import TopKLogprobs


class _FusedLinearLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, t_hidden, t_weight, t_logits, labels, rows, cfg, *params):
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            cd = torch.promote_types(hidden.dtype, weight.dtype)
            h = (hidden if rows is None else hidden.index_select(0, rows)).to(cd)
            w = weight.to(cd)
            th = tw = tl = None
            if t_hidden is not None:
                tcd = torch.promote_types(t_hidden.dtype, t_weight.dtype)
                th = (t_hidden if rows is None else t_hidden.index_select(0, rows)).to(tcd)
                tw = t_weight.to(tcd)
            elif t_logits is not None:
                tl = t_logits if rows is None else t_logits.index_select(0, rows)
            lab = labels if (labels is None or rows is None) else labels.index_select(0, rows)
            cfg = dict(cfg, need_h=ctx.needs_input_grad[0], need_w=ctx.needs_input_grad[1], params=list(params))
            sums, stats, gh, gw, pg = chunk_pass(cfg, h, w, th, tw, tl, lab, cfg["want_grad"])
        if gh is not None and (rows is not None or gh.dtype != hidden.dtype):
            full = torch.zeros_like(hidden)
            gh = full.index_copy_(0, rows, gh.to(hidden.dtype)) if rows is not None else gh.to(hidden.dtype)
        ctx.grads = (gh, None if gw is None else gw.to(weight.dtype), pg)
        ctx.num_params = len(params)
        ratio, scale = cfg["ratio"], cfg["scale"]
        distil, lm = sums["distil"] * scale, sums["lm"] * scale
        total = ratio * distil + (1.0 - ratio) * lm if cfg["loss"].needs_teacher else lm.clone()
        stat_vec = torch.stack(list(stats.values())) if stats else hidden.new_zeros(0, dtype=torch.float32)
        ctx.mark_non_differentiable(distil, lm, stat_vec)
        return total, distil, lm, stat_vec

    @staticmethod
    def backward(ctx, g_total, *_unused):
        if ctx.grads is None:
            raise RuntimeError("fused loss: backward called twice (retain_graph is not supported)")
        gh, gw, pg = ctx.grads
        ctx.grads = None
        # In place: the buffers belong to this call and are freed right after.
        out = [None if x is None else x.mul_(g_total.to(x.dtype)) for x in (gh, gw)]
        pgs = [g.mul_(g_total) for g in pg] if pg else [None] * ctx.num_params
        return (*out, None, None, None, None, None, None, *pgs)


def _resolve_loss(loss, loss_kwargs) -> DistillLoss:
    if isinstance(loss, DistillLoss):
        if loss_kwargs:
            raise ValueError(f"loss: pass either a DistillLoss object or a name with kwargs, not both "
                             f"(got kwargs {sorted(loss_kwargs)})")
        return loss
    if isinstance(loss, str):
        return get_loss(loss, **loss_kwargs)
    raise ValueError(f"loss: expected a registry name or a DistillLoss, got {type(loss).__name__}")


def _check_linear(hidden, weight, hname: str, wname: str) -> None:
    if hidden.dim() != 2 or weight.dim() != 2:
        raise ValueError(f"{hname} must be [N, H] and {wname} [V, H], got {tuple(hidden.shape)} and "
                         f"{tuple(weight.shape)}")
    if hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"{wname}: hidden size {weight.shape[1]} does not match {hname} ({hidden.shape[1]})")
    check_finite_tensor(hidden, hname)
    check_finite_tensor(weight, wname)


def _check_teacher(loss, n, vocab, teacher_hidden, teacher_weight, teacher_logits):
    if not loss.needs_teacher:
        return
    if teacher_logits is not None:
        if teacher_hidden is not None or teacher_weight is not None:
            raise ValueError("teacher_logits: give either teacher_hidden/teacher_weight or teacher_logits, not both")
        check_logits(teacher_logits.logprobs if isinstance(teacher_logits, TopKLogprobs) else teacher_logits,
                     "teacher_logits")
        if tuple(teacher_logits.shape) != (n, vocab):
            raise ValueError(f"teacher_logits: expected shape {(n, vocab)}, got {tuple(teacher_logits.shape)}")
        return
    if teacher_hidden is None or teacher_weight is None:
        raise ValueError(f"teacher_hidden: loss {loss.name!r} needs teacher_hidden and teacher_weight "
                         "(or teacher_logits)")
    _check_linear(teacher_hidden, teacher_weight, "teacher_hidden", "teacher_weight")
    if teacher_hidden.shape[0] != n:
        raise ValueError(f"teacher_hidden: {teacher_hidden.shape[0]} rows, student_hidden has {n}")
    if teacher_weight.shape[0] != vocab:
        raise ValueError(f"teacher_weight: vocabulary {teacher_weight.shape[0]} != student_weight's {vocab}")


def _full_fallback(loss, hidden, weight, t_hidden, t_weight, t_logits, mask, labels, ratio, reduction):
    s = hidden @ weight.T
    lm = torch.zeros((), device=hidden.device)
    if labels is not None:
        lab = labels.masked_fill(~mask, -100) if mask is not None else labels
        ce = F.cross_entropy(s.float(), lab, ignore_index=-100, reduction="sum")
        lm = ce if reduction == "sum" else ce / max(int((lab != -100).sum()), 1)
    if not loss.needs_teacher:
        return {"loss": lm, "distil_loss": torch.zeros_like(lm), "lm_loss": lm.detach()}
    with torch.no_grad():
        t = t_logits if t_logits is not None else t_hidden @ t_weight.T
        if isinstance(t, TopKLogprobs):
            t = t.dense()
    distil = loss(s, t, mask, labels=labels, reduction=reduction)
    total = ratio * distil + (1.0 - ratio) * lm
    return {"loss": total, "distil_loss": distil.detach(), "lm_loss": lm.detach(), **loss.stats}


# "auto" chunk rows: one fp32 [rows, V] buffer of about AUTO_CHUNK_BYTES, at most AUTO_MAX_ROWS.
# Two such buffers (student and teacher) live for the whole call (_chunk.py), so the fused loss holds
# 2 x 64 MiB at V = 151,936 (104 rows) where the floor's full logits hold several [N, V]. The row cap
# keeps the same proportion at mid-size vocabularies: at V = 32,000 the budget alone would give 520
# rows, i.e. the whole 508-row batch of bench_step in one chunk (0.65x of the floor's memory); 256
# rows give two chunks and about 0.4x. Fewer rows than ~100 make the head's matrix products thin
# (measured on this CPU: 64 rows cost 2.5-3x per row what 1024 do, 256 rows 1.3-1.4x), hence the floor.
AUTO_CHUNK_BYTES = 64 * 2**20
AUTO_MAX_ROWS = 256


def chunk_rows(chunk_size: int | str, vocab: int) -> int:
    """Rows per chunk of the fused loop: an int as given; ``"auto"`` sizes a ``[rows, vocab]`` fp32
    buffer near ``AUTO_CHUNK_BYTES``, a multiple of 8 in ``[16, AUTO_MAX_ROWS]``."""
    if chunk_size == "auto":
        rows = AUTO_CHUNK_BYTES // (4 * max(int(vocab), 1))
        return int(min(AUTO_MAX_ROWS, max(16, rows // 8 * 8)))
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int or 'auto', got {chunk_size!r}")
    return chunk_size


def fused_linear_losses(student_hidden: torch.Tensor, student_weight: torch.Tensor,
                        teacher_hidden: torch.Tensor | None = None, teacher_weight: torch.Tensor | None = None, *,
                        loss: str | DistillLoss = "taid", mask: torch.Tensor | None = None, chunk_size: int | str = "auto",
                        labels: torch.Tensor | None = None, reduction: str = "mean", distil_ratio: float = 1.0,
                        teacher_logits: torch.Tensor | TopKLogprobs | None = None, **loss_kwargs) -> dict[str, torch.Tensor]:
    """Total = (1 - distil_ratio) * lm + distil_ratio * distil from hidden states, chunk by chunk.

    Args:
        student_hidden: ``[N, H]``; student_weight: ``[V, H]`` (logits = hidden @ weight.T, no bias).
        teacher_hidden: ``[N, Ht]`` and teacher_weight ``[V, Ht]``, or ``teacher_logits [N, V]``
            (precomputed; -inf allowed) or a ``TopKLogprobs`` (a cache's top-k rows, densified one
            chunk at a time); all None for sft. The teacher gets no gradient.
        loss: registry name (built with ``loss_kwargs``) or a ``DistillLoss``.
        mask: ``[N]`` bool, None = all valid; labels: ``[N]`` int64 targets (-100 = masked).
        chunk_size: rows per chunk, or "auto" (``chunk_rows``). reduction: "mean" over valid tokens or "sum".
        distil_ratio: weight of the distillation loss; labels are required when it is < 1.
    Returns:
        ``{"loss", "distil_loss", "lm_loss", **stat sums}``; only ``loss`` carries gradient (w.r.t.
        student_hidden, student_weight and the loss's own parameters, e.g. CTKD's temperature), equal
        to the full-logits computation. For sft, ``loss`` = lm and ``distil_loss`` = 0. A loss with
        ``fusable = False`` falls back transparently to full ``[N, V]`` logits. Backward can run once.
    """
    loss = _resolve_loss(loss, loss_kwargs)
    check_reduction(reduction)
    ratio = check_range("distil_ratio", distil_ratio, 0.0, 1.0)
    _check_linear(student_hidden, student_weight, "student_hidden", "student_weight")
    n, vocab = student_hidden.shape[0], student_weight.shape[0]
    chunk_size = chunk_rows(chunk_size, vocab)
    _check_teacher(loss, n, vocab, teacher_hidden, teacher_weight, teacher_logits)
    m = flat_mask(mask, student_hidden.shape[:1], student_hidden.device)
    need_labels = loss.needs_labels or (ratio < 1.0 and loss.needs_teacher) or not loss.needs_teacher
    lab = flat_labels(labels, student_hidden.shape[:1], vocab, need_labels, f"loss {loss.name!r} (or distil_ratio < 1)")
    if not loss.fusable:
        return _full_fallback(loss, student_hidden, student_weight, teacher_hidden, teacher_weight, teacher_logits,
                              m, lab, ratio, reduction)
    valid = valid_rows(m, lab, n, student_hidden.device)
    rows = None if valid is None else valid.nonzero().view(-1)
    n_valid = n if rows is None else int(rows.numel())
    scale = 1.0 if reduction == "sum" else 1.0 / max(n_valid, 1)
    params = loss.trainable_params()
    cfg = {"loss": loss, "ratio": ratio, "scale": scale, "chunk": chunk_size, "want_grad": torch.is_grad_enabled()}
    total, distil, lm, stat_vec = _FusedLinearLoss.apply(
        student_hidden, student_weight, teacher_hidden if loss.needs_teacher else None,
        teacher_weight if loss.needs_teacher else None, teacher_logits if loss.needs_teacher else None,
        lab, rows, cfg, *params)
    loss.stats = {k: stat_vec[i] for i, k in enumerate(loss.stat_keys)}
    return {"loss": total, "distil_loss": distil, "lm_loss": lm, **loss.stats}


def fused_distill_loss(student_hidden: torch.Tensor, student_weight: torch.Tensor,
                       teacher_hidden: torch.Tensor | None = None, teacher_weight: torch.Tensor | None = None, *,
                       loss: str | DistillLoss = "taid", mask: torch.Tensor | None = None, chunk_size: int | str = "auto",
                       labels: torch.Tensor | None = None, reduction: str = "mean",
                       teacher_logits: torch.Tensor | TopKLogprobs | None = None, **loss_kwargs) -> torch.Tensor:
    """The distillation loss alone (``distil_ratio = 1``) from hidden states; see ``fused_linear_losses``.

    Same value and gradients (w.r.t. student_hidden and student_weight) as ``loss(hidden @ W.T,
    teacher_hidden @ Wt.T, mask)``, holding at most ``chunk_size`` rows of ``[*, V]`` at a time.
    For sft (no teacher) it is the cross-entropy on ``labels``. Stats land in ``loss.stats``.
    """
    return fused_linear_losses(student_hidden, student_weight, teacher_hidden, teacher_weight, loss=loss, mask=mask,
                               chunk_size=chunk_size, labels=labels, reduction=reduction, distil_ratio=1.0,
                               teacher_logits=teacher_logits, **loss_kwargs)["loss"]
