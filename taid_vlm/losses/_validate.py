"""Cheap input checks shared by every loss: clear ValueErrors naming the argument, before heavy work.

Also the one place that turns user tensors into what the per-token divergences expect:
``[N, V]`` fp32 logits of the valid rows only, with ``-inf`` (excluded vocabulary) replaced by a
large finite negative number so that ``0 * log 0`` never turns into NaN.
"""

from __future__ import annotations

import math

import torch

from taid_vlm.data.types import IGNORE_INDEX

__all__ = ["IGNORE_INDEX", "NEG_FILL", "NonFiniteError", "OptionError"]
# exp(NEG_FILL - max) underflows to exactly 0 in fp32, so a filled column has probability 0 (as if
# sliced out of the vocabulary) while log-probabilities stay finite and products with 0 stay 0.
NEG_FILL = -1e9
REDUCTIONS = ("mean", "sum")


class NonFiniteError(ValueError):
    """Logits, hidden states or weights hold NaN or +inf (a diverged model, or bad input)."""


class OptionError(ValueError):
    """A loss option is invalid; ``option`` names it (so that a config can name ``loss.<option>``)."""

    def __init__(self, option: str, message: str) -> None:
        super().__init__(message)
        self.option = option


def check_logits(x: torch.Tensor, name: str) -> None:
    """Floating ``[..., V]`` tensor without NaN or +inf (-inf marks excluded vocabulary columns)."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"{name}: expected floating-point logits, got dtype {x.dtype}")
    if x.dim() < 2:
        raise ValueError(f"{name}: expected shape [N, V] or [B, T, V], got {tuple(x.shape)}")
    if x.numel() == 0:
        return
    lo, hi = torch.aminmax(x.detach())  # one pass, no bool [N, V]; NaN propagates into both
    if not bool(torch.isnan(lo) | torch.isnan(hi) | torch.isposinf(hi)):
        return
    if bool(torch.isnan(x).any()):
        raise NonFiniteError(f"{name} contains NaN")
    if bool(torch.isposinf(x).any()):
        raise NonFiniteError(f"{name} contains +inf (only -inf is allowed, for excluded vocabulary columns)")


def check_finite_tensor(x: torch.Tensor, name: str) -> None:
    """No NaN/inf at all (hidden states, LM-head weights)."""
    if not x.numel():
        return
    # One reduction pass: NaN propagates into the min and max, and inf is the max or the min. Not
    # isfinite(x).all(), which writes a bool tensor of x's size (an LM head's [V, H] every step).
    lo, hi = torch.aminmax(x.detach())
    if not bool(torch.isfinite(lo) & torch.isfinite(hi)):
        raise NonFiniteError(f"{name} contains NaN or inf")


def check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def check_range(name: str, value: float, lo: float, hi: float, *, lo_open: bool = False,
                hi_open: bool = False) -> float:
    """``value`` as a float inside ``[lo, hi]`` (``(`` / ``)`` where open), else ValueError naming it."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise OptionError(name, f"{name} must be a scalar, got shape {tuple(value.shape)}")
        value = float(value)
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise OptionError(name, f"{name} must be a number, got {value!r}") from None
    bad = (not math.isfinite(v) or v < lo or v > hi or (lo_open and v == lo) or (hi_open and v == hi))
    if bad:
        lb, rb = "(" if lo_open else "[", ")" if hi_open else "]"
        raise OptionError(name, f"{name} must be in {lb}{lo}, {hi}{rb}, got {value}")
    return v


def check_temperature(temperature: float) -> float:
    return check_range("temperature", temperature, 0.0, math.inf, lo_open=True, hi_open=True)


def flat_mask(mask: torch.Tensor | None, lead_shape: torch.Size, device: torch.device) -> torch.Tensor | None:
    """``mask`` of the leading shape as a flat bool ``[N]`` (None stays None)."""
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor):
        raise ValueError(f"mask: expected a torch.Tensor or None, got {type(mask).__name__}")
    if tuple(mask.shape) != tuple(lead_shape):
        raise ValueError(f"mask: expected shape {tuple(lead_shape)} (the logits without V), got {tuple(mask.shape)}")
    return (mask != 0).reshape(-1).to(device)


def flat_labels(labels: torch.Tensor | None, lead_shape: torch.Size, vocab: int, required: bool,
                who: str) -> torch.Tensor | None:
    """``labels`` of the leading shape as int64 ``[N]``; IGNORE_INDEX allowed, others in ``[0, V)``."""
    if labels is None:
        if required:
            raise ValueError(f"labels: {who} needs the target token ids (labels=[N] int64)")
        return None
    if not isinstance(labels, torch.Tensor) or labels.is_floating_point() or labels.is_complex():
        raise ValueError("labels: expected an integer torch.Tensor of target token ids")
    if tuple(labels.shape) != tuple(lead_shape):
        raise ValueError(f"labels: expected shape {tuple(lead_shape)}, got {tuple(labels.shape)}")
    flat = labels.reshape(-1).long()
    bad = ((flat < 0) & (flat != IGNORE_INDEX)) | (flat >= vocab)
    if flat.numel() and bool(bad.any()):
        raise ValueError(f"labels: ids must be in [0, {vocab}) or {IGNORE_INDEX}")
    return flat


def sanitize(x: torch.Tensor) -> torch.Tensor:
    """fp32 copy-if-needed of ``x`` with -inf replaced by NEG_FILL (differentiable, zero grad there)."""
    x = x.float()
    neg = torch.isneginf(x)
    if bool(neg.any()):
        x = x.masked_fill(neg, NEG_FILL)
    return x


def sanitize_pair(s: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``sanitize`` both sides with one set of excluded columns: a column that is -inf on either side
    (a vocabulary one model lacks) is excluded from both, so it adds a zero term to every divergence
    instead of a ~1e9-sized one where only one side excludes it (reverse KL, AKL)."""
    s, t = s.float(), t.float()
    neg = torch.isneginf(s) | torch.isneginf(t)
    if bool(neg.any()):
        s, t = s.masked_fill(neg, NEG_FILL), t.masked_fill(neg, NEG_FILL)
    return s, t


def valid_rows(mask: torch.Tensor | None, labels: torch.Tensor | None, n: int,
               device: torch.device) -> torch.Tensor | None:
    """Flat bool ``[N]`` of rows that count (mask true and label not ignored); None when all count."""
    valid = mask
    if labels is not None:
        keep = labels != IGNORE_INDEX
        valid = keep if valid is None else valid & keep
    if valid is None or bool(valid.all()):
        return None
    return valid


def prepare(student: torch.Tensor, teacher: torch.Tensor | None, mask: torch.Tensor | None,
            labels: torch.Tensor | None, *, needs_teacher: bool, needs_labels: bool, who: str):
    """Validate and flatten the inputs of a full-logits loss.

    Args:
        student: ``[N, V]`` or ``[B, T, V]`` logits, any float dtype.
        teacher: same shape, or None when the loss has no teacher.
        mask: leading shape or None; labels: leading shape int64 or None.
    Returns:
        ``(s [Nv, V] fp32, t [Nv, V] fp32 | None, labels [Nv] | None, n_valid int)`` with only the
        valid rows, -inf sanitised.
    """
    check_logits(student, "student_logits")
    if needs_teacher:
        if teacher is None:
            raise ValueError(f"teacher_logits: {who} needs teacher logits, got None")
        check_logits(teacher, "teacher_logits")
        if teacher.shape != student.shape:
            raise ValueError(f"teacher_logits: shape {tuple(teacher.shape)} does not match student_logits "
                             f"{tuple(student.shape)}")
    lead, vocab = student.shape[:-1], student.shape[-1]
    m = flat_mask(mask, lead, student.device)
    lab = flat_labels(labels, lead, vocab, needs_labels, who)
    s = student.reshape(-1, vocab)
    t = teacher.reshape(-1, vocab) if needs_teacher else None
    valid = valid_rows(m, lab, s.shape[0], s.device)
    if valid is not None:
        s = s[valid]
        t = t[valid] if t is not None else None
        lab = lab[valid] if lab is not None else None
    if t is None:
        return sanitize(s), None, lab, s.shape[0]
    s, t = sanitize_pair(s, t)
    return s, t, lab, s.shape[0]


def reduce(per_token: torch.Tensor, n_valid: int, reduction: str) -> torch.Tensor:
    """Sum, or mean over ``n_valid`` tokens; 0 (connected to the graph) when nothing is valid."""
    total = per_token.sum()
    return total if reduction == "sum" else total / max(n_valid, 1)
