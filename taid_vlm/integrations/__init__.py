"""The package's losses (TAID's schedule included) in loops users already run.

- plain PyTorch: ``distill_losses`` per micro-batch + ``LossStepper`` per optimizer step;
- ``transformers.Trainer``: ``DistillTrainer`` (or ``LossStepCallback`` in your own subclass);
- TRL: ``taid_vlm.integrations.trl.TAIDDistillationTrainer`` (needs the ``trl`` extra).

All reuse ``train/step.py``'s arithmetic: on the same batches they give the same loss and the same t
as ``taid-vlm train``.
"""

from taid_vlm.integrations.core import (
    LossStepper,
    as_adapter,
    default_reduce,
    distill_losses,
    resolve_loss,
    response_token_count,
)
from taid_vlm.integrations.hf_trainer import DistillTrainer, LossStepCallback

__all__ = ["DistillTrainer", "LossStepCallback", "LossStepper", "as_adapter", "default_reduce", "distill_losses",
           "resolve_loss", "response_token_count"]
