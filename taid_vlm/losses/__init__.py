"""Pure tensor losses: divergences, TAID target + schedule, registry and the fused LM-head path.

Public API (DESIGN.md section 3)::

    taid_loss, TAIDSchedule, get_loss, fused_distill_loss, forward_kl, reverse_kl,
    total_variation, generalized_jsd, skew_forward_kl, skew_reverse_kl, adaptive_kl
"""

from taid_vlm.losses._validate import NonFiniteError, OptionError
from taid_vlm.losses.base import DistillLoss
from taid_vlm.losses.functional import (
    adaptive_kl,
    dkd_loss,
    forward_kl,
    generalized_jsd,
    reverse_kl,
    skew_forward_kl,
    skew_reverse_kl,
    total_variation,
)
from taid_vlm.losses.fused import fused_distill_loss, fused_linear_losses
from taid_vlm.losses.modules import CTKDLoss, DKDLoss, TAIDLoss
from taid_vlm.losses.registry import LOSS_NAMES, LOSSES, get_loss, loss_options, register_loss
from taid_vlm.losses.schedule import TAIDSchedule
from taid_vlm.losses.sparse import TopKLogprobs
from taid_vlm.losses.taid import taid_loss

__all__ = [
    "NonFiniteError", "OptionError", "loss_options", "register_loss",
    "CTKDLoss", "DKDLoss", "DistillLoss", "LOSSES", "LOSS_NAMES", "TAIDLoss", "TAIDSchedule", "TopKLogprobs", "adaptive_kl",
    "dkd_loss", "forward_kl", "fused_distill_loss", "fused_linear_losses", "generalized_jsd", "get_loss",
    "reverse_kl", "skew_forward_kl", "skew_reverse_kl", "taid_loss", "total_variation",
]
