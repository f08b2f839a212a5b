"""Distillation across tokenizers: map both sides onto one space, then apply any ``DistillLoss``.

Every divergence here (TAID included) is defined on one vocabulary, so each mode first maps the
teacher's (and, for ULD, the student's) next-token distribution onto a common space:

- ``byte_aligned``, one-to-one rows: the teacher's log-probs are carried to the student's ids of
  the *shared* tokens (identical byte strings); the other columns are -inf, which every loss
  excludes from both sides. The loss is then the chosen divergence on the shared part of the two
  vocabularies, both renormalised there. TAID interpolates in the student's vocabulary:
  p_t = softmax((1 - t) * stopgrad(s) + t * mapped teacher) over the shared columns.
- ``byte_aligned``, merged groups (several tokens on either side for the same text): each side's
  probability of the group's text is the product of its tokens' conditionals; both are compared as
  two-outcome distributions {this text, anything else} with the same loss (two-column "logits"
  ``[log P, log(1 - P)]``), weighted by the group's number of student tokens.
- ``uld``: both distributions are sorted (rank space, Boizard et al. 2024); the longer vocabulary's
  tail beyond the shorter one's size is folded into the last rank (zero padding would make KL-type
  divergences infinite). ULD's own distance, sum |sorted p - sorted q|, is ``2 * tvd`` there; any
  other loss is that divergence between the rank distributions. TAID interpolates in rank space.

Limits of TAID hold in every mode because the mapping comes before the loss: at t = 1 the target is
the mapped teacher, so the value equals the mode's forward KL; at t = 0 the target is the
(detached) mapped student, so value and gradient are zero.

Memory: rows are processed ``chunk_size`` at a time; with gradients each chunk runs under
activation checkpointing, so at most one chunk's ``[C, V_t] + [C, V_s]`` buffers are alive.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from taid_vlm.losses.base import DistillLoss

RowsLogits = Callable[[torch.Tensor], torch.Tensor]  # row indices [n] -> logits [n, V]
_LOG_ONE = -1e-6  # a span probability of exactly 1 would make log(1 - P) = -inf


def map_to_student_vocab(teacher_logits: torch.Tensor, teacher_ids: torch.Tensor, student_ids: torch.Tensor,
                         student_vocab: int) -> torch.Tensor:
    """Teacher log-probs carried onto the student's vocabulary.

    Args:
        teacher_logits: ``[n, V_t]``; teacher_ids, student_ids: ``[S]`` pairs of shared tokens.
        student_vocab: ``V_s``.
    Returns:
        ``[n, V_s]`` fp32: ``log_softmax(teacher)[teacher_ids]`` at ``student_ids``, -inf elsewhere.
    """
    lp = F.log_softmax(teacher_logits.float(), dim=-1)
    out = lp.new_full((lp.shape[0], student_vocab), float("-inf"))
    out[:, student_ids] = lp[:, teacher_ids]
    return out


def rank_logprobs(logits: torch.Tensor, size: int) -> torch.Tensor:
    """``[n, V] -> [n, size]`` log-probs sorted in decreasing order, ranks ``>= size - 1`` folded
    into the last one (``size <= V``); differentiable (the sort permutes the gradient back)."""
    lp = torch.sort(F.log_softmax(logits.float(), dim=-1), dim=-1, descending=True).values
    if lp.shape[-1] == size:
        return lp
    tail = torch.logsumexp(lp[:, size - 1:], dim=-1, keepdim=True)
    return torch.cat([lp[:, : size - 1], tail], dim=-1)


def span_outcome_logits(logits: torch.Tensor, token_ids: torch.Tensor, group: torch.Tensor,
                        num_groups: int) -> torch.Tensor:
    """Two-outcome log-probs of merged groups.

    Args:
        logits: ``[M, V]`` rows of the groups' tokens; token_ids: ``[M]`` the tokens actually there;
        group: ``[M]`` group index of each row; num_groups: ``G``.
    Returns:
        ``[G, 2]`` fp32 ``[log P, log(1 - P)]`` with P the product of the rows' probabilities of
        their tokens (the probability of the group's text), clamped below 1.
    """
    tok = F.log_softmax(logits.float(), dim=-1).gather(1, token_ids.unsqueeze(1)).squeeze(1)
    return two_outcome(tok.new_zeros(num_groups).index_add(0, group, tok))


def two_outcome(joint: torch.Tensor) -> torch.Tensor:
    """``[G]`` log-probabilities ``log P`` -> ``[G, 2]`` ``[log P, log(1 - P)]`` (P clamped below 1)."""
    joint = joint.clamp(max=_LOG_ONE)
    # log(1 - e^x): expm1 near 0, log1p far from it (both accurate where they are used).
    rest = torch.where(joint > -0.6931, torch.log(-torch.expm1(joint)), torch.log1p(-torch.exp(joint)))
    return torch.stack([joint, rest], dim=-1)


def _chunks(n: int, size: int):
    for a in range(0, n, size):
        yield a, min(a + size, n)


def _run(fn, use_ckpt: bool, *args):
    return checkpoint(fn, *args, use_reentrant=False) if use_ckpt else fn(*args)


def _stat_vec(loss_fn: DistillLoss, extras: dict[str, torch.Tensor], device) -> torch.Tensor:
    return torch.stack([extras[k].detach().float().sum() if k in extras else torch.zeros((), device=device)
                        for k in loss_fn.stat_keys]) if loss_fn.stat_keys else torch.zeros(0, device=device)


def pair_loss(student_at: RowsLogits, teacher_at: RowsLogits, pair_s: torch.Tensor, pair_t: torch.Tensor,
              loss_fn: DistillLoss, *, mode: str, vocab_map: tuple[torch.Tensor, torch.Tensor] | None,
              chunk_size: int, checkpointed: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum over aligned row pairs of the loss in the mode's common space.

    Args:
        student_at / teacher_at: row indices -> ``[n, V_s]`` / ``[n, V_t]`` logits (with autograd
            on the student side).
        pair_s, pair_t: ``[P]`` aligned rows. mode: ``byte_aligned`` or ``uld``.
        vocab_map: ``(teacher_ids, student_ids)`` of the shared tokens (byte_aligned).
    Returns:
        ``(sum of per-pair values, stat sums [len(loss_fn.stat_keys)])``.
    """
    device = pair_s.device
    total = torch.zeros((), device=device)
    stats = torch.zeros(len(loss_fn.stat_keys), device=device)

    def chunk(ps: torch.Tensor, pt: torch.Tensor):
        s = student_at(ps).float()
        with torch.no_grad():
            t = teacher_at(pt).float()
        if mode == "uld":
            size = min(s.shape[-1], t.shape[-1])
            s, t = rank_logprobs(s, size), rank_logprobs(t, size)
        else:
            t = map_to_student_vocab(t, vocab_map[0], vocab_map[1], s.shape[-1])
        value = loss_fn(s, t, reduction="sum")
        return value, _stat_vec(loss_fn, loss_fn.stats, device)

    for a, b in _chunks(int(pair_s.numel()), chunk_size):
        v, st = _run(chunk, checkpointed, pair_s[a:b], pair_t[a:b])
        total, stats = total + v, stats + st.detach()
    return total, stats


def merged_loss(student_at: RowsLogits, teacher_at: RowsLogits, student_targets: torch.Tensor,
                teacher_targets: torch.Tensor, span_s: torch.Tensor, span_s_group: torch.Tensor,
                span_t: torch.Tensor, span_t_group: torch.Tensor, span_w: torch.Tensor, loss_fn: DistillLoss,
                *, chunk_size: int, checkpointed: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted sum over merged groups of the loss between the two-outcome span distributions.

    Args:
        student_targets / teacher_targets: ``[N_s]`` / ``[N_t]`` token ids of every response row.
        span_s, span_s_group: ``[Ms]`` student rows of the groups and their group index (same for t).
        span_w: ``[G]`` weight of each group (its number of student tokens).
    Returns:
        ``(sum_g w_g * loss_g, weighted stat sums)``.
    """
    device = span_w.device
    g = int(span_w.numel())
    if g == 0:
        return torch.zeros((), device=device), torch.zeros(len(loss_fn.stat_keys), device=device)
    with torch.no_grad():  # the teacher side is small: [G, 2] once its rows are reduced chunk by chunk
        t2 = torch.zeros(g, device=device)
        for a, b in _chunks(int(span_t.numel()), chunk_size):
            rows = span_t[a:b]
            lp = F.log_softmax(teacher_at(rows).float(), -1).gather(1, teacher_targets[rows].unsqueeze(1))
            t2.index_add_(0, span_t_group[a:b], lp.squeeze(1))
        t2 = two_outcome(t2)

    def rows_logp(rows: torch.Tensor) -> torch.Tensor:
        lp = F.log_softmax(student_at(rows).float(), -1)
        return lp.gather(1, student_targets[rows].unsqueeze(1)).squeeze(1)

    s_joint = torch.zeros(g, device=device)
    for a, b in _chunks(int(span_s.numel()), chunk_size):
        s_joint = s_joint.index_add(0, span_s_group[a:b], _run(rows_logp, checkpointed, span_s[a:b]))
    vals, extras = loss_fn.per_token_with_stats(two_outcome(s_joint), t2, None)
    w = span_w.to(vals.dtype)
    stats = torch.stack([(extras[k].detach().float() * w).sum() for k in loss_fn.stat_keys]) \
        if loss_fn.stat_keys else torch.zeros(0, device=device)
    return (vals * w).sum(), stats


def lm_loss(student_at: RowsLogits, targets: torch.Tensor, *, chunk_size: int, checkpointed: bool) -> torch.Tensor:
    """Sum of the student's cross-entropy on its ``[N]`` response targets, chunk by chunk."""
    total = torch.zeros((), device=targets.device)
    idx = torch.arange(targets.numel(), device=targets.device)

    def chunk(rows: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(student_at(rows).float(), targets[rows], reduction="sum")

    for a, b in _chunks(int(targets.numel()), chunk_size):
        total = total + _run(chunk, checkpointed, idx[a:b])
    return total
