"""One distillation step: frozen teacher + student -> response-aligned logits -> named losses.

Everything returned is a SUM over the valid response tokens of this micro-batch; the trainer
divides by the token count of the whole optimizer step (all micro-batches, all ranks), so the
result does not depend on how tokens are split (STYLE.md 3).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.distributed.tensor import DTensor

from taid_vlm.adapters.base import Adapter, ResponseHidden
from taid_vlm.losses import DistillLoss, TopKLogprobs

if TYPE_CHECKING:
    from taid_vlm.cache import TeacherCache
    from taid_vlm.train.cross_step import CachedTeacherRows
    from taid_vlm.train.setup import RunParts


class StudentForward(nn.Module):
    """Wraps the student's model so that DDP/FSDP see a forward through the wrapped module."""

    def __init__(self, adapter: Adapter) -> None:
        super().__init__()
        self.adapter = adapter
        self.model = adapter.model  # registered so .parameters() and DDP see the student's weights
        # accelerate's FSDP transformer auto-wrap reads this from the module it prepares (this one).
        self._no_split_modules = list(getattr(adapter.model, "_no_split_modules", None) or [])

    def forward(self, batch: dict[str, torch.Tensor]) -> ResponseHidden:
        out = self.adapter.response_hidden(batch)
        if isinstance(out.weight, DTensor):
            # An FSDP2 shard of the LM head: the loss needs the whole [V, H] matrix. full_tensor()
            # all-gathers it, and its backward reduce-scatters the gradient back onto the shard.
            out = dataclasses.replace(out, weight=out.weight.full_tensor(),
                                      bias=None if out.bias is None else out.bias.full_tensor())
        return out


def teacher_response(teacher: Adapter, batch: dict[str, torch.Tensor]) -> ResponseHidden:
    """The teacher's response rows, computed without autograd (the teacher is frozen), on the
    batch's device (a dispatched teacher's last layer may sit elsewhere; its head may be offloaded)."""
    from taid_vlm.train.placement import teacher_context

    dev = batch["input_ids"].device
    with torch.no_grad(), teacher_context(teacher.model, dev):
        out = teacher.response_hidden(batch)
        weight = out.weight.detach().to(dev)
    return ResponseHidden(
        hidden=out.hidden.detach().to(dev), weight=weight, targets=out.targets.to(dev),
        sample_index=out.sample_index.to(dev), bias=None if out.bias is None else out.bias.detach().to(dev),
        logit_softcap=out.logit_softcap, logit_scale=out.logit_scale,
    )


def cached_teacher_logprobs(cache: TeacherCache, student: ResponseHidden, ids: list[str]) -> TopKLogprobs:
    """A batch's teacher rows from the top-k cache (rows checked at collation), on the student's
    device. Sparse: the fused loss densifies one chunk at a time, never ``[N, V]``."""
    rows = cache.rows(ids)
    return TopKLogprobs(rows["topk_ids"], rows["topk_logprobs"], rows["rest_mass"],
                        student.weight.shape[0]).to(student.hidden.device)


def cached_teacher_rows(cache: TeacherCache, student: ResponseHidden, ids: list[str],
                        alignment: Any) -> CachedTeacherRows:
    """A cross-tokenizer batch's teacher rows from the cache (``cross_step.CachedTeacherRows``): each
    sample's first ``alignment.teacher_rows`` rows (the turns the alignment kept), in the teacher's
    vocabulary, on the student's device."""
    from taid_vlm.train.cross_step import CachedTeacherRows

    rows = cache.rows(ids, lengths=alignment.teacher_rows.tolist())
    dev = student.hidden.device
    return CachedTeacherRows(TopKLogprobs(rows["topk_ids"], rows["topk_logprobs"], rows["rest_mass"],
                                          cache.vocab_size).to(dev), rows["targets"].long().to(dev))


def teacher_side(parts: RunParts, student: ResponseHidden, batch: dict[str, Any]
                 ) -> tuple[ResponseHidden | CachedTeacherRows | None, TopKLogprobs | None]:
    """``(teacher rows, None)`` from a live teacher, ``(None, top-k rows)`` from a cache, or
    ``(None, None)`` without a teacher (sft). Teacher/student alignment was checked at collation.
    Across tokenizers a cache gives ``(CachedTeacherRows, None)``: the rows the alignment refers to."""
    if parts.teacher is not None:
        return teacher_response(parts.teacher, batch["teacher"]), None
    if parts.cache is not None and parts.loss_fn.needs_teacher:
        if batch.get("alignment") is not None:
            return cached_teacher_rows(parts.cache, student, batch["ids"], batch["alignment"]), None
        return None, cached_teacher_logprobs(parts.cache, student, batch["ids"])
    return None, None


def stack_sums(out: dict[str, torch.Tensor], keys: tuple[str, ...], device: torch.device) -> torch.Tensor:
    """``[len(keys)]`` fp32 detached sums of ``out`` in ``keys`` order, for one all-reduce (0 where a
    key is absent, e.g. stats of a loss on a path that does not report them)."""
    zero = torch.zeros((), device=device)
    return torch.stack([out[k].detach().float().to(device) if k in out else zero for k in keys])


def compute_losses(
    student: ResponseHidden,
    teacher: ResponseHidden | CachedTeacherRows | None,
    loss_fn: DistillLoss,
    *,
    distil_ratio: float = 1.0,
    fused: bool = True,
    chunk_size: int | str = "auto",
    teacher_logits: torch.Tensor | TopKLogprobs | None = None,
    alignment: Any = None,
) -> dict[str, torch.Tensor]:
    """Losses of one micro-batch as sums over its N response tokens.

    Args:
        student: student response rows (``hidden [N, H]``, ``weight [V, H]``).
        teacher: teacher response rows (``hidden [N, Ht]``) or None (sft, or a cache); across
            tokenizers also a cache's ``CachedTeacherRows``.
        loss_fn: a ``taid_vlm.losses.DistillLoss``.
        teacher_logits: ``[N, V]`` teacher logits/log-probs, or a cache's ``TopKLogprobs`` (sparse on
            the fused path; densified on the full path), instead of ``teacher``.
        alignment: the batch's ``BatchAlignment`` when the tokenizers differ (``train/cross_step.py``).
    Returns:
        ``{"loss", "distil_loss", "lm_loss", **loss_fn stats}``, scalar sums; ``loss`` carries grad:
        ``(1 - distil_ratio) * lm + distil_ratio * distil`` (``lm`` alone for sft).
    """
    from taid_vlm.losses import fused_linear_losses

    ratio = 0.0 if not loss_fn.needs_teacher else distil_ratio
    if alignment is not None and teacher is not None and loss_fn.needs_teacher:
        from taid_vlm.train.cross_step import cross_tokenizer_losses

        return cross_tokenizer_losses(student, teacher, alignment, loss_fn, distil_ratio=ratio, fused=fused,
                                      chunk_size=chunk_size)
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
        if isinstance(t_logits, TopKLogprobs):
            t_logits = t_logits.dense()
        distil = loss_fn(s_logits, t_logits, labels=student.targets, reduction="sum")
    else:
        distil = torch.zeros((), device=lm.device)
    total = (1.0 - ratio) * lm + ratio * distil if loss_fn.needs_teacher else lm
    return {"loss": total, "distil_loss": distil.detach(), "lm_loss": lm.detach(), **loss_fn.stats}


BASE_KEYS = ("loss", "distil_loss", "lm_loss")


def step_keys(loss_fn: DistillLoss) -> tuple[str, ...]:
    """Names of the per-micro-batch sums a step accumulates: the three losses + the loss's stats."""
    return (*BASE_KEYS, *loss_fn.stat_keys)


def end_loss_step(loss_fn: DistillLoss, means: dict[str, float] | None, step: int, total_steps: int
                  ) -> dict[str, float]:
    """The loss's once-per-optimizer-step hook, as every loop must call it (``taid-vlm train`` and the
    ``taid_vlm.integrations`` loops share this one call).

    Args:
        means: token-means over every micro-batch and rank of the step of at least ``loss_fn.stat_keys``
            (equal on every rank), or None when the step was skipped as non-finite (t stays).
        step: optimizer steps completed before this one (0-based); total_steps: of the run.
    Returns:
        what the loss logs for this step (e.g. ``{"taid_t", "taid_signal"}``).
    """
    stats = None if means is None else {k: means[k] for k in loss_fn.stat_keys}
    return loss_fn.on_optimizer_step(stats, step, total_steps)
