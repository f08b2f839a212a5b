"""A package loss in a loop that is not ``taid-vlm train``: the micro-batch losses and the once-per-
optimizer-step bookkeeping (TAID's schedule, CTKD's curriculum), built on the trainer's own pieces.

The arithmetic is ``train/step.py``'s (``compute_losses``, ``teacher_response``, ``end_loss_step``), so a
foreign loop fed the same batches gets the same loss and the same t as ``taid-vlm train``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from taid_vlm.adapters.base import Adapter
from taid_vlm.data.types import IGNORE_INDEX
from taid_vlm.losses import DistillLoss, get_loss
from taid_vlm.train.step import compute_losses, end_loss_step, stack_sums, step_keys, teacher_response

Reduce = Callable[[torch.Tensor], torch.Tensor]


def as_adapter(model: nn.Module | Adapter, tokenizer: Any = None) -> Adapter:
    """An ``Adapter`` as it is, or a plain HF causal LM read through the text adapter.

    ``tokenizer`` (its ``len``) cuts padded LM-head rows off, as in ``taid-vlm train``; VLMs and composed
    students come as adapters (``taid_vlm.adapters.build_adapter``)."""
    if isinstance(model, Adapter):
        return model
    if tokenizer is None:
        raise ValueError("tokenizer: a plain model needs its tokenizer (the vocabulary is compared over "
                         "len(tokenizer) columns); pass tokenizer= / processing_class=, or an Adapter")
    from taid_vlm.adapters.text import TextAdapter

    return TextAdapter(model, getattr(tokenizer, "tokenizer", tokenizer))


def resolve_loss(loss: str | DistillLoss, **options: Any) -> DistillLoss:
    """``get_loss(loss, **options)`` for a registry name, the object itself otherwise (no options)."""
    if isinstance(loss, DistillLoss):
        if options:
            raise ValueError(f"loss options {sorted(options)} given with a built loss object; pass the name instead")
        return loss
    return get_loss(loss, **options)


def response_token_count(batch: dict[str, torch.Tensor]) -> int:
    """Tokens that a batch distils: labels ``[B, L]`` not -100 after the causal shift."""
    return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())


def distill_losses(student: Adapter, teacher: Adapter | None, batch: dict[str, torch.Tensor],
                   loss_fn: DistillLoss, *, teacher_batch: dict[str, torch.Tensor] | None = None,
                   distil_ratio: float = 1.0, fused: bool = True, chunk_size: int | str = "auto",
                   ) -> dict[str, torch.Tensor]:
    """One micro-batch's losses as SUMS over its N response tokens (``train/step.compute_losses``).

    Args:
        student, teacher: adapters (``as_adapter``); the teacher runs without autograd; None for sft.
        batch: ``input_ids``/``attention_mask`` ``[B, L]``, ``labels [B, L]`` (-100 outside responses,
            not shifted, as HF causal LMs take them) and the family's image inputs.
        teacher_batch: the teacher's encoding when its template/processor differs (same response tokens).
    Returns:
        ``{"loss" (grad), "distil_loss", "lm_loss", **loss_fn.stats, "num_tokens"}``, scalar sums;
        divide ``loss`` by the tokens of the whole optimizer step before ``backward``.
    """
    s = student.response_hidden(batch)
    t = None
    if teacher is not None and loss_fn.needs_teacher:
        t = teacher_response(teacher, batch if teacher_batch is None else teacher_batch)
    out = compute_losses(s, t, loss_fn, distil_ratio=distil_ratio, fused=fused, chunk_size=chunk_size)
    return {**out, "num_tokens": torch.tensor(float(s.targets.numel()), device=s.hidden.device)}


def default_reduce(x: torch.Tensor) -> torch.Tensor:
    """Sum over ranks with ``torch.distributed`` when it is initialised; identity otherwise."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        x = x.clone()
        torch.distributed.all_reduce(x)
    return x


class LossStepper:
    """The per-optimizer-step protocol of a ``DistillLoss`` for any loop.

    Per optimizer step: ``begin(step)``, then ``accumulate(out)`` after each micro-batch's
    ``distill_losses``, then ``end(step)`` once after ``optimizer.step()``: it sums the micro-batches,
    all-reduces over ranks (``reduce``, a SUM), divides by the step's token count and calls the loss's
    hook, so TAID's t moves once per optimizer step with the signal averaged over micro-batches and ranks,
    exactly as in ``taid-vlm train``. Evaluation calls none of the three.

    Args:
        loss_fn: the loss object (its state is its own: save ``loss_fn.state_dict()`` with checkpoints).
        total_steps: optimizer steps of the run (TAID's linear floor and CTKD's curriculum use it).
        reduce: sum over ranks; default ``default_reduce``. Pass ``accelerator.reduce`` under accelerate.
    """

    def __init__(self, loss_fn: DistillLoss, total_steps: int, reduce: Reduce | None = None) -> None:
        if int(total_steps) < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        self.loss_fn = loss_fn
        self.total_steps = int(total_steps)
        self.reduce = reduce or default_reduce
        self.keys = (*step_keys(loss_fn), "num_tokens")
        self._sums: torch.Tensor | None = None
        self.last: dict[str, float] = {}

    def begin(self, step: int) -> None:
        """Before the micro-batches of optimizer step ``step`` (0-based)."""
        self._sums = None
        self.loss_fn.on_step_begin(step, self.total_steps)

    def accumulate(self, out: dict[str, torch.Tensor]) -> None:
        """Add one training micro-batch's sums (``distill_losses``' output)."""
        vec = stack_sums(out, self.keys, out["loss"].device)
        self._sums = vec if self._sums is None else self._sums + vec.to(self._sums.device)

    def sync_loss_grads(self, num_processes: int) -> None:
        """Average the gradients of the loss's own parameters (CTKD's temperature) over ranks before
        ``optimizer.step()``: a loss is not wrapped for DDP, nothing else keeps its copies equal."""
        if num_processes <= 1:
            return
        for q in self.loss_fn.parameters():
            if q.grad is not None:
                q.grad = self.reduce(q.grad) / num_processes

    def end(self, step: int) -> dict[str, float]:
        """After ``optimizer.step()`` of step ``step``: the step's token-means (``loss``, ``distil_loss``,
        ``lm_loss``, the loss's stats) and what the loss's hook logs (e.g. ``taid_t``)."""
        if self._sums is None:
            raise RuntimeError("LossStepper.end: no micro-batch was accumulated since begin()")
        sums = self.reduce(self._sums)
        n = float(sums[-1])
        means = {k: float(v) / max(n, 1.0) for k, v in zip(self.keys[:-1], sums[:-1])}
        finite = math.isfinite(means["loss"])
        logs = end_loss_step(self.loss_fn, means if finite else None, step, self.total_steps)
        self._sums = None
        self.last = {**means, "tokens": n, **logs}
        return self.last
