"""The distillation step when teacher and student tokenizers differ (``teacher.tokenizer_alignment``).

Same contract as ``step.compute_losses``: sums over this micro-batch's student response tokens,
which the trainer divides by the step's token count. The distillation sum weighs each aligned
group by its number of student tokens, so it is a per-student-token quantity like the LM loss;
student tokens left unaligned (ULD's tails) add no distillation term.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from taid_vlm.adapters.base import ResponseHidden
from taid_vlm.data.alignment import BatchAlignment
from taid_vlm.losses import DistillLoss, TopKLogprobs
from taid_vlm.losses.cross_tokenizer import lm_loss, merged_loss, pair_loss
from taid_vlm.losses.fused import chunk_rows


@dataclass
class CachedTeacherRows:
    """A batch's teacher response rows read from the teacher cache instead of a teacher forward.

    Attributes:
        logprobs: ``[N_t, V_t]`` top-k log-probs + rest mass in the teacher's vocabulary (sparse;
            densified ``chunk_size`` rows at a time, as the live teacher's logits are).
        targets: ``[N_t]`` int64 the teacher's own response token ids.
    """

    logprobs: TopKLogprobs
    targets: torch.Tensor

    def at(self, idx: torch.Tensor) -> torch.Tensor:
        """``indices [n] -> [n, V_t]`` fp32 teacher log-probs (the rest mass spread evenly)."""
        return self.logprobs.index_select(0, idx).dense()


def rows_logits(rows: ResponseHidden):
    """``indices [n] -> logits [n, V]`` of the given response rows (bias, scale, soft-cap applied)."""

    def at(idx: torch.Tensor) -> torch.Tensor:
        z = nn.functional.linear(rows.hidden.index_select(0, idx), rows.weight, rows.bias) * rows.logit_scale
        if rows.logit_softcap is not None:
            z = rows.logit_softcap * torch.tanh(z / rows.logit_softcap)
        return z

    return at


def cross_tokenizer_losses(student: ResponseHidden, teacher: ResponseHidden | CachedTeacherRows,
                           alignment: BatchAlignment,
                           loss_fn: DistillLoss, *, distil_ratio: float = 1.0, fused: bool = True,
                           chunk_size: int | str = "auto") -> dict[str, torch.Tensor]:
    """Losses of one micro-batch as sums: ``{"loss", "distil_loss", "lm_loss", **stats, **xtok counts}``.

    Args:
        student, teacher: response rows of each side (``hidden [N_s, H]`` / ``[N_t, H_t]``), or the
            teacher's rows from the cache (every mode only needs the teacher's log-probs per row:
            each mapping starts with a log-softmax, which leaves log-probs as they are).
        alignment: the collator's ``BatchAlignment`` (rows, groups, mode, shared vocabulary).
        fused: process rows ``chunk_size`` at a time under activation checkpointing (no
            ``[N, V]`` logits for all rows); False computes each part in one chunk.
    """
    dev = student.hidden.device
    al = alignment.to(dev)
    ckpt = fused and torch.is_grad_enabled()
    cached = isinstance(teacher, CachedTeacherRows)
    v_t = teacher.logprobs.vocab_size if cached else teacher.weight.shape[0]
    vocab = max(student.weight.shape[0], v_t)  # each chunk holds [C, V_t] + [C, V_s]
    chunk = chunk_rows(chunk_size, vocab) if fused else max(1, student.hidden.shape[0], teacher.targets.shape[0])
    s_at = rows_logits(student)
    t_at = teacher.at if cached else rows_logits(teacher)
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
