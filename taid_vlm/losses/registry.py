"""Loss registry: names -> ``DistillLoss`` classes, with errors that list the valid names."""

from __future__ import annotations

import inspect

from taid_vlm.losses.base import DistillLoss
from taid_vlm.losses.modules import (
    AKLLoss,
    CTKDLoss,
    DKDLoss,
    ForwardKLLoss,
    GJSDLoss,
    ReverseKLLoss,
    SFTLoss,
    SkewFKLLoss,
    SkewRKLLoss,
    TAIDLoss,
    TVDLoss,
)

LOSSES: dict[str, type[DistillLoss]] = {
    cls.name: cls
    for cls in (SFTLoss, ForwardKLLoss, ReverseKLLoss, TVDLoss, GJSDLoss, SkewFKLLoss, SkewRKLLoss, AKLLoss,
                CTKDLoss, DKDLoss, TAIDLoss)
}
LOSS_NAMES: tuple[str, ...] = tuple(LOSSES)


def get_loss(name: str, **kwargs) -> DistillLoss:
    """Build the loss registered as ``name`` (sft, fkl, rkl, tvd, gjsd, skew_fkl, skew_rkl, akl, ctkd, dkd, taid).

    ``kwargs`` go to the class (e.g. ``beta`` for gjsd, ``alpha`` for skew_fkl, the schedule for taid).
    Raises ValueError for an unknown name (listing the valid ones) or an unknown argument.
    """
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; valid names: {', '.join(LOSS_NAMES)}")
    cls = LOSSES[name]
    params = inspect.signature(cls.__init__).parameters
    allowed = [p for p in params if p != "self"]
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise ValueError(f"get_loss({name!r}): unknown argument(s) {unknown}; valid: {', '.join(allowed)}")
    return cls(**kwargs)
