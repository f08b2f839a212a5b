"""Any package loss (TAID's schedule included) inside ``transformers.Trainer``.

``DistillTrainer`` is a ``Trainer`` whose ``compute_loss`` runs the frozen teacher and the package loss
on the response tokens; ``LossStepCallback`` advances the loss's state once per optimizer step with the
signal averaged over the accumulated micro-batches and all-reduced over ranks, never in evaluation.
Both reuse ``taid_vlm.integrations.core``, hence the arithmetic of ``taid-vlm train``.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn
from transformers import Trainer, TrainerCallback

from taid_vlm.adapters.base import Adapter
from taid_vlm.integrations.core import (
    LossStepper,
    as_adapter,
    distill_losses,
    resolve_loss,
    response_token_count,
)
from taid_vlm.losses import DistillLoss

LOSS_STATE_FILE = "distill_loss_state.pt"  # beside the HF checkpoint: TAID's t, CTKD's temperature


class LossStepCallback(TrainerCallback):
    """Advances a ``DistillLoss`` once per optimizer step of a ``transformers.Trainer``.

    The trainer's ``compute_loss`` calls ``accumulate(out)`` with each TRAINING micro-batch's
    ``distill_losses`` sums (never in evaluation); the callback calls the loss's ``on_step_begin`` at
    ``on_step_begin``, averages loss-parameter gradients over ranks before the optimizer, and after it
    calls ``end_loss_step`` with the token-means of the step over micro-batches and ranks.

    Args:
        loss_fn: the loss object.
        accelerator: the trainer's ``accelerate.Accelerator`` (its ``reduce`` all-reduces the sums).
    """

    def __init__(self, loss_fn: DistillLoss, accelerator: Any = None) -> None:
        self.loss_fn = loss_fn
        self.accelerator = accelerator
        self.stepper: LossStepper | None = None
        self.history: list[dict[str, float]] = []  # one entry per optimizer step of this process

    def _reduce(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.accelerator is None else self.accelerator.reduce(x, reduction="sum")

    def on_train_begin(self, args, state, control, **kwargs):
        self.stepper = LossStepper(self.loss_fn, state.max_steps, reduce=self._reduce)

    def accumulate(self, out: dict[str, torch.Tensor]) -> None:
        """Add one training micro-batch's sums (ignored before training starts)."""
        if self.stepper is not None:
            self.stepper.accumulate(out)

    def on_step_begin(self, args, state, control, **kwargs):
        self.stepper.begin(state.global_step)

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.stepper.sync_loss_grads(1 if self.accelerator is None else self.accelerator.num_processes)

    def on_optimizer_step(self, args, state, control, **kwargs):
        # global_step still counts the steps before this one: the 0-based step of taid-vlm train.
        self.history.append({"step": state.global_step + 1, **self.stepper.end(state.global_step)})

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
            if os.path.isdir(folder):
                torch.save(self.loss_fn.state_dict(), os.path.join(folder, LOSS_STATE_FILE))


def _redirect_forward(wrapper: nn.Module, inner: nn.Module, fn: Any, *args: Any) -> Any:
    """Run ``fn(*args)`` as the forward of ``wrapper`` (DDP/FSDP around ``inner``), so the wrapper's
    forward hooks (DDP's gradient-sync bookkeeping, FSDP's all-gather) fire although the loss reads
    hidden states rather than calling ``inner(...)``. TRL does the same (``_ForwardRedirection``); it is
    written here because TRL is an optional dependency."""
    original = inner.forward

    def once(*a: Any, **k: Any) -> Any:
        inner.forward = original
        return fn(*a, **k)

    inner.forward = once
    try:
        return wrapper(*args)
    finally:
        inner.forward = original


def load_loss_state(loss_fn: DistillLoss, checkpoint: str, device: Any) -> None:
    """Restore ``loss_fn``'s state (TAID's t, CTKD's temperature) saved by ``LossStepCallback.on_save``."""
    path = os.path.join(checkpoint, LOSS_STATE_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"resume_from_checkpoint: {checkpoint} has no {LOSS_STATE_FILE} (the loss's "
                                "schedule); it was not written by a taid_vlm.integrations trainer")
    loss_fn.load_state_dict(torch.load(path, map_location=device, weights_only=True))


class PackageLossMixin:
    """What a Trainer running a package loss adds to ``transformers.Trainer`` (and TRL's subclasses):
    the loss's own parameters in the optimizer, the step's loss parts in the logs, its state on resume.
    Needs ``self.loss_fn`` and ``self.loss_callback``."""

    loss_fn: DistillLoss
    loss_callback: LossStepCallback

    def create_optimizer(self, *args: Any, **kwargs: Any):
        """The default optimizer plus the loss's own parameters (CTKD's temperature), without decay."""
        opt = super().create_optimizer(*args, **kwargs)
        have = {id(q) for g in opt.param_groups for q in g["params"]}
        extra = [q for q in self.loss_fn.trainable_params() if id(q) not in have]
        if extra:
            opt.add_param_group({"params": extra, "weight_decay": 0.0})
        return opt

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        # The last optimizer step's loss parts and schedule (taid_t, ...) beside Trainer's averaged loss.
        stepper = self.loss_callback.stepper
        if stepper is not None and stepper.last and "loss" in logs:
            logs = {**logs, **{k: v for k, v in stepper.last.items() if k not in ("loss", "tokens")}}
        super().log(logs, *args, **kwargs)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        load_loss_state(self.loss_fn, resume_from_checkpoint, self.args.device)


class DistillTrainer(PackageLossMixin, Trainer):
    """``transformers.Trainer`` distilling ``teacher_model`` into ``model`` with a package loss.

    Args:
        model: the student, an HF causal LM or an ``Adapter`` (VLMs, composed students).
        teacher_model: the frozen teacher (same kinds), or None for ``sft``.
        loss: a registry name (``get_loss``; ``loss_options`` go to it) or a ``DistillLoss``.
        distil_ratio: total = (1 - r) * LM cross-entropy + r * distillation loss.
        fused, chunk_size: the chunked LM-head path of ``taid-vlm train`` (never an ``[N, V]`` tensor).
        teacher_batch_key: a key of the inputs holding the teacher's own encoding (other template or
            image processor), or None to feed the teacher the student's inputs.
        **kwargs: ``Trainer``'s (``args``, ``train_dataset``, ``processing_class``, ``data_collator``, ...).

    Inputs are ``input_ids``/``attention_mask``/``labels`` ``[B, L]`` (labels -100 outside the responses,
    not shifted). Each step's loss is the token-sum over its micro-batches and ranks divided by their
    token count, as in ``taid-vlm train``. The loss's state is saved in every checkpoint
    (``LOSS_STATE_FILE``) and restored by ``train(resume_from_checkpoint=...)``.
    """

    loss_is_scaled_for_ga = True  # compute_loss divides by the step's token count itself

    def __init__(self, model: nn.Module | Adapter, teacher_model: nn.Module | Adapter | None = None, *,
                 loss: str | DistillLoss = "taid", loss_options: dict[str, Any] | None = None,
                 distil_ratio: float = 1.0, fused: bool = True, chunk_size: int | str = "auto",
                 teacher_batch_key: str | None = None, **kwargs: Any) -> None:
        tok = kwargs.get("processing_class")
        self.student_adapter = as_adapter(model, tok)
        self.loss_fn = resolve_loss(loss, **(loss_options or {}))
        if self.loss_fn.needs_teacher and teacher_model is None:
            raise ValueError(f"teacher_model: loss {self.loss_fn.name!r} needs a teacher")
        self.teacher_adapter = None if teacher_model is None else as_adapter(teacher_model, tok)
        self.distil_ratio, self.fused, self.chunk_size = distil_ratio, fused, chunk_size
        self.teacher_batch_key = teacher_batch_key
        super().__init__(model=self.student_adapter.model, **kwargs)
        self.loss_fn.to(self.args.device)
        if self.teacher_adapter is not None:
            teacher = self.teacher_adapter.model
            teacher.requires_grad_(False).eval()
            if not hasattr(teacher, "hf_device_map"):  # a dispatched teacher stays where it was placed
                teacher.to(self.args.device)
        self.loss_callback = LossStepCallback(self.loss_fn, self.accelerator)
        self.add_callback(self.loss_callback)

    def _get_num_items_in_batch(self, batch_samples: list, device: torch.device) -> torch.Tensor:
        # The step's response tokens over its micro-batches and ranks: the divisor of taid-vlm train.
        n = torch.tensor(float(sum(response_token_count(b) for b in batch_samples)), device=device)
        return self.accelerator.reduce(n, reduction="sum")

    def _losses(self, inputs: dict[str, Any]) -> dict[str, torch.Tensor]:
        teacher_batch = inputs.get(self.teacher_batch_key) if self.teacher_batch_key else None
        student_batch = {k: v for k, v in inputs.items() if k != self.teacher_batch_key}
        return distill_losses(self.student_adapter, self.teacher_adapter, student_batch, self.loss_fn,
                              teacher_batch=teacher_batch, distil_ratio=self.distil_ratio, fused=self.fused,
                              chunk_size=self.chunk_size)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """Token-mean total loss of the step; per-micro-batch sums go to the loss's step callback."""
        # accelerate's mixed precision lives in the patched model.forward, which the loss does not call:
        # its autocast is entered here, as taid-vlm train does around the whole step.
        with self.accelerator.autocast():
            if model is self.student_adapter.model:
                out = self._losses(inputs)
            else:  # wrapped for DDP/FSDP: the forward must go through the wrapper
                out = _redirect_forward(model, self.student_adapter.model, self._losses, inputs)
        training = self.student_adapter.model.training and torch.is_grad_enabled()
        if training:
            self.loss_callback.accumulate(out)
        if training and num_items_in_batch is not None:
            # x processes: DDP averages gradients, the divisor already counts every rank's tokens.
            loss = out["loss"] * self.accelerator.num_processes / torch.clamp(torch.as_tensor(num_items_in_batch), min=1)
        else:
            loss = out["loss"] / out["num_tokens"].clamp(min=1)
        return (loss, out) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """Evaluation: the token-mean loss of the batch; the loss's state does not move."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None
