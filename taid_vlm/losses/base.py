"""``DistillLoss``: the module interface that the trainer, the full path and the fused path share."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from taid_vlm.losses._validate import check_reduction, check_temperature, prepare, reduce


class DistillLoss(nn.Module):
    """A named distillation loss over response tokens; it owns its state and its per-step hooks.

    Subclasses implement ``per_token`` (or ``per_token_with_stats``) on raw fp32 logits of the valid
    rows; the same code serves the full-logits ``forward`` and ``fused_linear_losses`` (which feeds it
    chunk by chunk), so the two paths agree for every loss. ``value_and_grad`` may be overridden with
    a closed form that needs fewer ``[C, V]`` buffers (TAID, forward KL).

    The trainer knows no loss by name. Per optimizer step it calls ``on_step_begin(step, total)``,
    then the loss on each micro-batch, then ``on_optimizer_step(stats, step, total)`` with the
    token-means of ``stat_keys`` over every micro-batch and rank, and logs what that returns. The
    loss's own state (TAID's schedule, CTKD's curriculum) travels in ``state_dict()`` with its
    parameters (as nn.Module "extra state"), so checkpoints restore it without the trainer knowing.

    Attributes:
        name: registry name.
        needs_teacher: False only for ``sft``.
        needs_labels: the loss uses the target token ids (sft, dkd).
        stat_keys: keys of ``stats``.
        fusable: False makes ``fused_linear_losses`` fall back to full logits.
        stats: after each forward, detached fp32 scalar SUMS over valid tokens of extra quantities.
    """

    name: str = "base"
    needs_teacher: bool = True
    needs_labels: bool = False
    stat_keys: tuple[str, ...] = ()
    fusable: bool = True
    option_help: dict[str, str] = {}  # noqa: RUF012 - read-only; a note per option in "unknown option" errors

    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__()
        self.temperature = check_temperature(temperature)
        self.stats: dict[str, torch.Tensor] = {}

    # -- to implement ---------------------------------------------------------------------------
    def per_token(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor | None,
                  labels: torch.Tensor | None) -> torch.Tensor:
        """Divergence per token, ``[N, V]`` fp32 (valid rows, -inf sanitised) -> ``[N]``."""
        return self.per_token_with_stats(student_logits, teacher_logits, labels)[0]

    def per_token_with_stats(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor | None,
                             labels: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(per_token [N], {stat_key: detached [N]})``; subclasses override one of the two methods."""
        if type(self).per_token is DistillLoss.per_token:
            raise NotImplementedError(f"{type(self).__name__} must implement per_token")
        return self.per_token(student_logits, teacher_logits, labels), {}

    # -- shared -----------------------------------------------------------------------------------
    def _tempered(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor | None
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.temperature == 1.0:
            return student_logits, teacher_logits
        t = self.temperature
        return student_logits / t, (None if teacher_logits is None else teacher_logits / t)

    def trainable_params(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    # -- per-step hooks and state (the trainer's whole interface to a loss's schedule) ---------------
    def on_step_begin(self, step: int, total_steps: int) -> None:
        """Called before the micro-batches of optimizer step ``step`` (0-based) of ``total_steps``."""

    def on_optimizer_step(self, stats: dict[str, float] | None, step: int, total_steps: int) -> dict[str, float]:
        """Called once after optimizer step ``step`` (0-based; never per micro-batch, never in eval).

        Args:
            stats: token-means of ``stat_keys`` over all micro-batches and ranks of the step (equal on
                every rank), or None when the step was skipped as non-finite.
        Returns:
            values to log for this step (e.g. ``{"taid_t": ...}``); the same on every rank.
        """
        return {}

    def loss_state(self) -> dict[str, Any]:
        """JSON-serialisable state beyond parameters (schedules); restored by ``load_loss_state``."""
        return {}

    def load_loss_state(self, state: dict[str, Any]) -> None:
        """Inverse of ``loss_state``."""

    def get_extra_state(self) -> dict[str, Any]:
        # nn.Module puts this in state_dict() beside the parameters: one state_dict for the whole loss.
        return self.loss_state()

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.load_loss_state(state)

    def value_and_grad(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor | None,
                       labels: torch.Tensor | None, need_grad: bool, student_logprobs: bool = False):
        """Values and gradient of ``sum(per_token)`` for one chunk (fused path).

        Args:
            student_logits: ``[C, V]`` fp32 (not modified); teacher_logits: ``[C, V]`` fp32, owned by
                the caller and MAY be overwritten; labels: ``[C]`` or None.
            student_logprobs: the student rows are log-probs already (the fused loop passes
                log_softmax of the logits: every loss is invariant to a per-row shift of the student
                logits); a closed form may then skip its own normalisation. Ignored here.
        Returns:
            ``(values [C], stats {key: [C]}, grad_s [C, V] | None, param_grads list | None)``, detached.
        """
        params = self.trainable_params() if need_grad else []
        with torch.enable_grad():
            leaf = student_logits.detach().requires_grad_(need_grad)
            vals, extras = self.per_token_with_stats(leaf, teacher_logits, labels)
            if not need_grad:
                return vals.detach(), extras, None, None
            grads = torch.autograd.grad(vals.sum(), [leaf, *params], allow_unused=True)
        pgrads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads[1:])]
        return vals.detach(), extras, grads[0], pgrads

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor | None = None,
                mask: torch.Tensor | None = None, *, labels: torch.Tensor | None = None,
                reduction: str = "mean") -> torch.Tensor:
        """Full-logits loss.

        Args:
            student_logits: ``[N, V]`` or ``[B, T, V]``, any float dtype (fp32 inside).
            teacher_logits: same shape, or None for ``sft``.
            mask: leading shape, None = all valid.
            labels: leading shape int64 target ids (needed by sft/dkd); rows with -100 count as masked.
            reduction: "mean" over valid tokens or "sum".
        Returns:
            scalar fp32 tensor (0 when no token is valid); ``self.stats`` holds the sums of extras.
        """
        check_reduction(reduction)
        s, t, lab, n = prepare(student_logits, teacher_logits if self.needs_teacher else None, mask, labels,
                               needs_teacher=self.needs_teacher, needs_labels=self.needs_labels, who=self.name)
        vals, extras = self.per_token_with_stats(s, t, lab)
        self.stats = {k: v.detach().float().sum() for k, v in extras.items()}
        return reduce(vals, n, reduction)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, temperature={self.temperature}"
