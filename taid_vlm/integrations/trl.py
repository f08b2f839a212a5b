"""Any package loss (TAID's schedule included) inside TRL's ``DistillationTrainer`` (trl >= 1.16).

TRL's ``DistillationTrainer`` trains on-policy: the student writes the completions, the teacher scores
them, and a generalized JSD (``beta``) compares the two. ``TRLDistillTrainer`` keeps all of TRL's
machinery (generation, vLLM, tools, PEFT/quantised students, logging) and replaces only the loss: the
package's, on the completion tokens, with ``LossStepCallback`` advancing its state once per optimizer
step. Needs the ``trl`` extra (``pip install 'taid-vlm[trl]'``). Text students (TRL's causal LMs).
"""

from __future__ import annotations

from typing import Any

import torch

try:
    from trl import DistillationTrainer
except ImportError as err:  # an optional extra: say which
    raise ImportError("taid_vlm.integrations.trl needs TRL >= 1.16: pip install 'taid-vlm[trl]'") from err

from taid_vlm.data.types import IGNORE_INDEX
from taid_vlm.integrations.core import as_adapter, distill_losses, resolve_loss
from taid_vlm.integrations.hf_trainer import LossStepCallback, PackageLossMixin
from taid_vlm.losses import DistillLoss


def completion_batch(inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """TRL's on-policy micro-batch -> the package's ``input_ids/attention_mask/labels [B, P + C]``.

    ``prompt_ids [B, P]`` (left-padded) + ``completion_ids [B, C]`` (right-padded); labels are the
    completion tokens where ``completion_mask`` (times ``tool_mask``: tool output is not trained on) is
    set, -100 elsewhere, so the loss sees exactly the positions TRL's own loss sees.
    """
    ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
    mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
    keep = inputs["completion_mask"] if "tool_mask" not in inputs else inputs["completion_mask"] * inputs["tool_mask"]
    labels = torch.full_like(ids, IGNORE_INDEX)
    width = inputs["prompt_ids"].shape[1]
    labels[:, width:] = torch.where(keep.bool(), inputs["completion_ids"], IGNORE_INDEX)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


class TRLDistillTrainer(PackageLossMixin, DistillationTrainer):
    """``trl.DistillationTrainer`` with a package loss in place of its generalized JSD.

    Args:
        model, teacher_model, **kwargs: as ``trl.DistillationTrainer`` (``args`` a ``DistillationConfig``;
            its ``beta`` is unused, its sampling ``temperature`` still drives generation).
        loss: a registry name (``loss_options`` go to ``get_loss``) or a ``DistillLoss``; default TAID.
        fused, chunk_size: the chunked LM-head path of ``taid-vlm train``.

    The loss is the token-sum over the step's micro-batches and ranks divided by their completion
    tokens (TRL's ``num_items_in_batch``); TAID's t moves once per optimizer step, never in evaluation,
    and is saved in each checkpoint (``LOSS_STATE_FILE``).
    """

    def __init__(self, model: Any, teacher_model: Any = None, *, loss: str | DistillLoss = "taid",
                 loss_options: dict[str, Any] | None = None, fused: bool = True, chunk_size: int | str = "auto",
                 **kwargs: Any) -> None:
        self.loss_fn = resolve_loss(loss, **(loss_options or {}))
        if not self.loss_fn.needs_teacher:
            raise ValueError(f"loss: {self.loss_fn.name!r} needs no teacher; TRL's SFTTrainer is the tool for it")
        self.fused, self.chunk_size = fused, chunk_size
        super().__init__(model, teacher_model, **kwargs)
        self.loss_fn.to(self.accelerator.device)
        self.student_adapter = as_adapter(self.accelerator.unwrap_model(self.model), self._tokenizer)
        self.teacher_adapter = as_adapter(self.accelerator.unwrap_model(self.teacher_model), self._tokenizer)
        self.loss_callback = LossStepCallback(self.loss_fn, self.accelerator)
        self.add_callback(self.loss_callback)

    def _package_losses(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        self.teacher_model.eval()
        return distill_losses(self.student_adapter, self.teacher_adapter, completion_batch(inputs), self.loss_fn,
                              fused=self.fused, chunk_size=self.chunk_size)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The package loss on the completions, through the student's DDP/FSDP wrapper (TRL's redirection)."""
        training = self.model.training and torch.is_grad_enabled()
        unwrapped = self.accelerator.unwrap_model(model)
        with self.accelerator.autocast():  # mixed precision (TRL's default bf16), as in hf_trainer.py
            out = self._forward_redirection(model, unwrapped, self._package_losses, inputs)
        if training:
            self.loss_callback.accumulate(out)
        if training and inputs.get("num_items_in_batch") is not None:
            # TRL counts the completion tokens of the whole step over all ranks; x processes as DDP averages.
            n = inputs["num_items_in_batch"].clamp(min=1.0) / self.accelerator.num_processes
            loss = out["loss"] / n.to(out["loss"].device)
        else:
            loss = out["loss"] / out["num_tokens"].clamp(min=1)
        return (loss, None) if return_outputs else loss
