"""One distillation step: frozen teacher + student -> response-aligned logits -> named losses.

Everything returned is a SUM over the valid response tokens of this micro-batch; the trainer
divides by the token count of the whole optimizer step (all micro-batches, all ranks), so the
result does not depend on how tokens are split (STYLE.md 3).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from taid_vlm.adapters.base import Adapter, ResponseHidden


class AlignmentError(ValueError):
    """Teacher and student disagree on the response tokens of a sample."""


def check_alignment(student: ResponseHidden, teacher: ResponseHidden, ids: list[str]) -> None:
    """The k-th response token of the teacher must be the k-th of the student, per sample.

    Args:
        student, teacher: response rows of one batch (``targets [N]``, ``sample_index [N]``).
        ids: sample ids of the batch, for the error message.
    Raises:
        AlignmentError naming the first sample whose response token ids differ.
    """
    if student.targets.shape == teacher.targets.shape and bool(
        torch.equal(student.targets.cpu(), teacher.targets.cpu())
        and torch.equal(student.sample_index.cpu(), teacher.sample_index.cpu())
    ):
        return
    for b, sample_id in enumerate(ids):
        s = student.targets[student.sample_index == b].tolist()
        t = teacher.targets[teacher.sample_index == b].tolist()
        if s != t:
            k = next((i for i, (a, c) in enumerate(zip(s, t)) if a != c), min(len(s), len(t)))
            raise AlignmentError(
                f"sample {sample_id!r}: teacher and student response tokens differ at response token {k} "
                f"(student {len(s)} tokens, {s[k:k + 5]}...; teacher {len(t)} tokens, {t[k:k + 5]}...). "
                "Both sides must tokenize the response identically (same tokenizer, same text)."
            )
    raise AlignmentError("teacher and student response rows are ordered differently")


class StudentForward(nn.Module):
    """Wraps the student's model so that DDP/FSDP see a forward through the wrapped module."""

    def __init__(self, adapter: Adapter) -> None:
        super().__init__()
        self.adapter = adapter
        self.model = adapter.model  # registered so .parameters() and DDP see the student's weights

    def forward(self, batch: dict[str, torch.Tensor]) -> ResponseHidden:
        return self.adapter.response_hidden(batch)


def teacher_response(teacher: Adapter, batch: dict[str, torch.Tensor]) -> ResponseHidden:
    """The teacher's response rows, computed without autograd (the teacher is frozen)."""
    with torch.no_grad():
        out = teacher.response_hidden(batch)
    return ResponseHidden(
        hidden=out.hidden.detach(), weight=out.weight.detach(), targets=out.targets,
        sample_index=out.sample_index, bias=None if out.bias is None else out.bias.detach(),
        logit_softcap=out.logit_softcap, logit_scale=out.logit_scale,
    )


def cached_teacher_logprobs(cache: Any, student: ResponseHidden, ids: list[str]) -> torch.Tensor:
    """``[N, V]`` teacher log-probs for a batch from the top-k cache, after the alignment check."""
    from taid_vlm.cache import dense_logprobs

    rows = cache.rows(ids)
    cached = ResponseHidden(
        hidden=student.hidden[:0], weight=student.weight, targets=rows["targets"].long(),
        sample_index=torch.repeat_interleave(torch.arange(len(ids)), cache.counts(ids)),
    )
    check_alignment(student, cached, ids)
    dense = dense_logprobs(rows["topk_ids"], rows["topk_logprobs"], rows["rest_mass"], student.weight.shape[0])
    return dense.to(student.hidden.device)


def teacher_side(parts: Any, student: ResponseHidden, batch: dict[str, Any]):
    """``(teacher rows, None)`` from a live teacher, ``(None, log-probs [N, V])`` from a cache, or
    ``(None, None)`` without a teacher (sft)."""
    if parts.teacher is not None:
        t = teacher_response(parts.teacher, batch["teacher"])
        check_alignment(student, t, batch["ids"])
        return t, None
    if getattr(parts, "cache", None) is not None and parts.loss_fn.needs_teacher:
        return None, cached_teacher_logprobs(parts.cache, student, batch["ids"])
    return None, None


def compute_losses(
    student: ResponseHidden,
    teacher: ResponseHidden | None,
    loss_fn: Any,
    *,
    distil_ratio: float = 1.0,
    fused: bool = True,
    chunk_size: int = 1024,
    teacher_logits: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Losses of one micro-batch as sums over its N response tokens.

    Args:
        student: student response rows (``hidden [N, H]``, ``weight [V, H]``).
        teacher: teacher response rows (``hidden [N, Ht]``) or None (sft, or a cache).
        loss_fn: a ``taid_vlm.losses.DistillLoss``.
        teacher_logits: ``[N, V]`` teacher logits/log-probs from a cache, instead of ``teacher``.
    Returns:
        ``{"loss", "distil_loss", "lm_loss", **loss_fn stats}``, scalar sums; ``loss`` carries grad:
        ``(1 - distil_ratio) * lm + distil_ratio * distil`` (``lm`` alone for sft).
    """
    from taid_vlm.losses import fused_linear_losses

    ratio = 0.0 if not loss_fn.needs_teacher else distil_ratio
    can_fuse = fused and student.plain_linear and (teacher is None or teacher.plain_linear)
    if can_fuse:
        return fused_linear_losses(
            student.hidden, student.weight,
            None if teacher is None else teacher.hidden, None if teacher is None else teacher.weight,
            loss=loss_fn, labels=student.targets, distil_ratio=ratio, reduction="sum",
            chunk_size=chunk_size, teacher_logits=teacher_logits,
        )
    s_logits = student.logits()
    lm = nn.functional.cross_entropy(s_logits.float(), student.targets, reduction="sum")
    if loss_fn.needs_teacher:
        t_logits = teacher.logits() if teacher is not None else teacher_logits
        distil = loss_fn(s_logits, t_logits, labels=student.targets, reduction="sum")
    else:
        distil = torch.zeros((), device=lm.device)
    total = (1.0 - ratio) * lm + ratio * distil if loss_fn.needs_teacher else lm
    return {"loss": total, "distil_loss": distil.detach(), "lm_loss": lm.detach(), **loss_fn.stats}
