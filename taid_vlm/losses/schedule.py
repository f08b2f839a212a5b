"""TAID's interpolation schedule (Algorithm 1 of arXiv 2501.16937, as the official code runs it)."""

from __future__ import annotations

import math
from typing import Any

import torch

from taid_vlm.losses._validate import OptionError, check_range


class TAIDSchedule:
    """The interpolation parameter t of TAID, updated once per optimizer step.

    Update rule (first call only stores the signal as ``prev``)::

        delta = (prev - J) / (prev + 1e-15)          # relative improvement of the signal J
        m     = beta * m + (1 - beta) * delta        # momentum
        t_lin = t_start + (t_end - t_start) * step / total_steps
        t     = min(t_end, max(t_lin, t + alpha * sigmoid(m) * (1 - t)))   # t_lin when not adaptive
        prev  = J

    ``step`` is the number of optimizer steps completed before this one (0-based, Lightning's
    ``global_step`` in the official code). Call it once per optimizer step with the signal averaged
    over micro-batches and ranks, never per micro-batch and never in evaluation.

    Args:
        t_start: initial t, ``0 <= t_start < t_end``.
        t_end: final t, ``<= 1``.
        alpha: step size of the adaptive increase, in ``[0, 1]``.
        beta: momentum of the relative change, in ``[0, 1)``.
        adaptive: False gives the linear schedule ``t_lin`` alone.
    """

    def __init__(self, t_start: float = 0.4, t_end: float = 1.0, alpha: float = 5e-4, beta: float = 0.99,
                 adaptive: bool = True) -> None:
        self.t_start = check_range("t_start", t_start, 0.0, 1.0)
        self.t_end = check_range("t_end", t_end, 0.0, 1.0)
        if self.t_start >= self.t_end:
            raise OptionError("t_start", f"t_start must be < t_end, got t_start={t_start}, t_end={t_end}")
        self.alpha = check_range("alpha", alpha, 0.0, 1.0)
        self.beta = check_range("beta", beta, 0.0, 1.0, hi_open=True)
        self.adaptive = bool(adaptive)
        self.t = self.t_start
        self.prev: float | None = None
        self.momentum = 0.0
        self.num_updates = 0

    def update(self, signal: float | torch.Tensor, step: int, total_steps: int) -> float:
        """Advance t with the step's signal J (TAID's distillation loss); returns the new t."""
        j = float(signal.detach()) if isinstance(signal, torch.Tensor) else float(signal)
        if not math.isfinite(j):
            raise ValueError(f"signal must be finite, got {j}")
        if int(total_steps) < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        if int(step) < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        self.num_updates += 1
        if self.prev is None:
            self.prev = j
            return self.t
        delta = (self.prev - j) / (self.prev + 1e-15)
        self.momentum = self.beta * self.momentum + (1.0 - self.beta) * delta
        t_lin = self.t_start + (self.t_end - self.t_start) * int(step) / int(total_steps)
        if self.adaptive:
            sig = 1.0 / (1.0 + math.exp(-self.momentum))
            self.t = min(self.t_end, max(t_lin, self.t + self.alpha * sig * (1.0 - self.t)))
        else:
            self.t = t_lin
        self.prev = j
        return self.t

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state (the configuration is included for reference only)."""
        return {"t": self.t, "prev": self.prev, "momentum": self.momentum, "num_updates": self.num_updates,
                "t_start": self.t_start, "t_end": self.t_end, "alpha": self.alpha, "beta": self.beta,
                "adaptive": self.adaptive}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore t, prev and the momentum; the configuration stays the one this object was built with."""
        for key in ("t", "prev", "momentum"):
            if key not in state:
                raise ValueError(f"state_dict: missing key {key!r}")
        self.t = check_range("t", state["t"], 0.0, 1.0)
        self.prev = None if state["prev"] is None else float(state["prev"])
        self.momentum = float(state["momentum"])
        self.num_updates = int(state.get("num_updates", 0))

    def __repr__(self) -> str:
        return (f"TAIDSchedule(t={self.t:.6f}, t_start={self.t_start}, t_end={self.t_end}, alpha={self.alpha}, "
                f"beta={self.beta}, adaptive={self.adaptive})")
