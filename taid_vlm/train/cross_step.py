"""The distillation step when teacher and student tokenizers differ (``teacher.tokenizer_alignment``).

Same contract as ``step.compute_losses``: sums over this micro-batch's student response tokens,
which the trainer divides by the step's token count. The distillation sum weighs each aligned
group by its number of student tokens, so it is a per-student-token quantity like the LM loss;
student tokens left unaligned (ULD's tails) add no distillation term.
"""

from __future__ import annotations

import torch
from torch import nn

from taid_vlm.adapters.base import ResponseHidden
from taid_vlm.data.alignment import BatchAlignment
from taid_vlm.losses import DistillLoss
from taid_vlm.losses.cross_tokenizer import lm_loss, merged_loss, pair_loss
from taid_vlm.losses.fused import chunk_rows


def rows_logits(rows: ResponseHidden):
    """``indices [n] -> logits [n, V]`` of the given response rows (bias, scale, soft-cap applied)."""

    def at(idx: torch.Tensor) -> torch.Tensor:
        z = nn.functional.linear(rows.hidden.index_select(0, idx), rows.weight, rows.bias) * rows.logit_scale
        if rows.logit_softcap is not None:
            z = rows.logit_softcap * torch.tanh(z / rows.logit_softcap)
        return z

    return at


def cross_tokenizer_losses(student: ResponseHidden, teacher: ResponseHidden, alignment: BatchAlignment,
                           loss_fn: DistillLoss, *, distil_ratio: float = 1.0, fused: bool = True,
                           chunk_size: int | str = "auto") -> dict[str, torch.Tensor]:
    """Losses of one micro-batch as sums: ``{"loss", "distil_loss", "lm_loss", **stats, **xtok counts}``.

    Args:
        student, teacher: response rows of each side (``hidden [N_s, H]`` / ``[N_t, H_t]``).
        alignment: the collator's ``BatchAlignment`` (rows, groups, mode, shared vocabulary).
        fused: process rows ``chunk_size`` at a time under activation checkpointing (no
            ``[N, V]`` logits for all rows); False computes each part in one chunk.
    """
    dev = student.hidden.device
    al = alignment.to(dev)
    ckpt = fused and torch.is_grad_enabled()
    vocab = max(student.weight.shape[0], teacher.weight.shape[0])  # each chunk holds [C, V_t] + [C, V_s]
    chunk = chunk_rows(chunk_size, vocab) if fused else max(1, student.hidden.shape[0], teacher.hidden.shape[0])
    s_at, t_at = rows_logits(student), rows_logits(teacher)
    lm = lm_loss(s_at, student.targets, chunk_size=chunk, checkpointed=ckpt)
    vmap = (al.vocab_t, al.vocab_s) if al.mode == "byte_aligned" else None
    d_pair, st_pair = pair_loss(s_at, t_at, al.pair_s, al.pair_t, loss_fn, mode=al.mode, vocab_map=vmap,
                                chunk_size=chunk, checkpointed=ckpt)
    d_span, st_span = merged_loss(s_at, t_at, student.targets, teacher.targets, al.span_s, al.span_s_group,
                                  al.span_t, al.span_t_group, al.span_w, loss_fn, chunk_size=chunk,
                                  checkpointed=ckpt)
    distil = d_pair + d_span
    stats = st_pair + st_span
    total = (1.0 - distil_ratio) * lm + distil_ratio * distil
    out = {"loss": total, "distil_loss": distil.detach(), "lm_loss": lm.detach()}
    out.update({k: stats[i] for i, k in enumerate(loss_fn.stat_keys)})
    out.update({k: torch.tensor(v, device=dev) for k, v in al.counts.items()})
    return out
