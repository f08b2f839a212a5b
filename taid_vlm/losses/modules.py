"""The loss modules behind the registry names (see ``registry.get_loss``)."""

from __future__ import annotations

import math

import torch
from torch import nn

from taid_vlm.losses import closed_form as CF
from taid_vlm.losses import divergences as D
from taid_vlm.losses._validate import OptionError, check_range
from taid_vlm.losses.base import DistillLoss
from taid_vlm.losses.schedule import TAIDSchedule
from taid_vlm.losses.taid import forward_kl_value_and_grad, taid_per_token, taid_value_and_grad


def _no_temperature(name: str, temperature: float) -> None:
    if float(temperature) != 1.0:
        raise OptionError("temperature", f"temperature: {name} takes no temperature (got {temperature}); "
                                         "leave it at 1.0")


def _returned(vals, grad, need_grad: bool):
    """``value_and_grad``'s return for a loss without stats or trainable parameters."""
    return vals, {}, grad, ([] if need_grad else None)


def _closed(loss: DistillLoss, body, s, t, need_grad: bool, student_logprobs: bool):
    """``value_and_grad``'s return for a divergence with a closed form in ``closed_form.py``."""
    return _returned(*CF.run_blocks(s, t, loss.temperature, student_logprobs, need_grad, body), need_grad)


def _forward_kl(loss: DistillLoss, s, t, need_grad: bool, student_logprobs: bool):
    """``value_and_grad``'s return for forward KL at the loss's temperature (TAID's kernel at t = 1)."""
    return _returned(*forward_kl_value_and_grad(s, t, loss.temperature, need_grad, student_logprobs), need_grad)


class SFTLoss(DistillLoss):
    """Cross-entropy of the student on the labels; no teacher."""

    name, needs_teacher, needs_labels = "sft", False, True

    def __init__(self, temperature: float = 1.0) -> None:
        _no_temperature("sft", temperature)
        super().__init__()

    def per_token(self, student_logits, teacher_logits, labels):
        return D.ce_per_token(student_logits, labels)


class ForwardKLLoss(DistillLoss):
    """KL(p_teacher || q_student) at ``temperature``."""

    name = "fkl"

    def per_token(self, student_logits, teacher_logits, labels):
        return D.fkl_per_token(*self._tempered(student_logits, teacher_logits))

    def value_and_grad(self, student_logits, teacher_logits, labels, need_grad, student_logprobs=False):
        return _forward_kl(self, student_logits, teacher_logits, need_grad, student_logprobs)


class ReverseKLLoss(DistillLoss):
    """KL(q_student || p_teacher)."""

    name = "rkl"

    def per_token(self, student_logits, teacher_logits, labels):
        return D.rkl_per_token(*self._tempered(student_logits, teacher_logits))

    def value_and_grad(self, student_logits, teacher_logits, labels, need_grad, student_logprobs=False):
        return _closed(self, CF.rkl, student_logits, teacher_logits, need_grad, student_logprobs)


class TVDLoss(DistillLoss):
    """Total variation distance 0.5 * sum |p - q|."""

    name = "tvd"

    def per_token(self, student_logits, teacher_logits, labels):
        return D.tvd_per_token(*self._tempered(student_logits, teacher_logits))

    def value_and_grad(self, student_logits, teacher_logits, labels, need_grad, student_logprobs=False):
        return _closed(self, CF.tvd, student_logits, teacher_logits, need_grad, student_logprobs)


class GJSDLoss(DistillLoss):
    """GKD's generalized JSD with mixture weight ``beta`` in (0, 1)."""

    name = "gjsd"

    def __init__(self, beta: float = 0.5, temperature: float = 1.0) -> None:
        super().__init__(temperature)
        self.beta = check_range("beta", beta, 0.0, 1.0, lo_open=True, hi_open=True)

    def per_token(self, student_logits, teacher_logits, labels):
        return D.gjsd_per_token(*self._tempered(student_logits, teacher_logits), self.beta)

    def value_and_grad(self, student_logits, teacher_logits, labels, need_grad, student_logprobs=False):
        return _closed(self, CF.gjsd(self.beta), student_logits, teacher_logits, need_grad, student_logprobs)


class SkewFKLLoss(DistillLoss):
    """DistiLLM skew forward KL with skew ``alpha`` in [0, 1]."""

    name = "skew_fkl"

    def __init__(self, alpha: float = 0.1, temperature: float = 1.0) -> None:
        super().__init__(temperature)
        self.alpha = check_range("alpha", alpha, 0.0, 1.0)

    def per_token(self, student_logits, teacher_logits, labels):
        return D.skew_fkl_per_token(*self._tempered(student_logits, teacher_logits), self.alpha)

    def value_and_grad(self, student_logits, teacher_logits, labels, need_grad, student_logprobs=False):
        if self.alpha == 0.0:  # plain forward KL
            return _forward_kl(self, student_logits, teacher_logits, need_grad, student_logprobs)
        return _closed(self, self._body(), student_logits, teacher_logits, need_grad, student_logprobs)

    def _body(self):
        return CF.zero if self.alpha == 1.0 else CF.skew_fkl(self.alpha)


class SkewRKLLoss(SkewFKLLoss):
    """DistiLLM skew reverse KL with skew ``alpha`` in [0, 1]."""

    name = "skew_rkl"

    def per_token(self, student_logits, teacher_logits, labels):
        return D.skew_rkl_per_token(*self._tempered(student_logits, teacher_logits), self.alpha)

    def value_and_grad(self, student_logits, teacher_logits, labels, need_grad, student_logprobs=False):
        return _closed(self, self._body(), student_logits, teacher_logits, need_grad, student_logprobs)

    def _body(self):
        return CF.rkl if self.alpha == 0.0 else CF.zero if self.alpha == 1.0 else CF.skew_rkl(self.alpha)


class AKLLoss(DistillLoss):
    """Adaptive KL (arXiv 2404.02657) with head threshold ``mu`` in (0, 1]."""

    name = "akl"

    def __init__(self, mu: float = 0.5, temperature: float = 1.0) -> None:
        super().__init__(temperature)
        self.mu = check_range("mu", mu, 0.0, 1.0, lo_open=True)

    def per_token(self, student_logits, teacher_logits, labels):
        return D.akl_per_token(*self._tempered(student_logits, teacher_logits), self.mu)

    def value_and_grad(self, student_logits, teacher_logits, labels, need_grad, student_logprobs=False):
        return _closed(self, CF.akl(self.mu), student_logits, teacher_logits, need_grad, student_logprobs)


class DKDLoss(DistillLoss):
    """Decoupled KD: (alpha * TCKD + beta * NCKD) * T^2, target = labels.

    Reduction: the mean over valid response tokens, like every loss here. The official DKD code
    (image classification) averages over the batch, where every position has a target; for
    sequences that would be over all positions, padding and prompt included, so the loss scale would
    change with the prompt length and the padding of a batch. Per valid token keeps it comparable
    with the other losses and independent of how tokens are split into micro-batches.
    """

    name, needs_labels = "dkd", True

    def __init__(self, alpha: float = 1.0, beta: float = 0.5, temperature: float = 1.0) -> None:
        super().__init__(temperature)
        self.alpha = check_range("alpha", alpha, 0.0, math.inf, hi_open=True)
        self.beta = check_range("beta", beta, 0.0, math.inf, hi_open=True)

    def per_token(self, student_logits, teacher_logits, labels):
        s, t = self._tempered(student_logits, teacher_logits)
        return D.dkd_per_token(s, t, labels, self.alpha, self.beta) * self.temperature**2

    def value_and_grad(self, student_logits, teacher_logits, labels, need_grad, student_logprobs=False):
        return _returned(*CF.dkd(student_logits, teacher_logits, labels, self.alpha, self.beta, self.temperature,
                                 need_grad, student_logprobs), need_grad)


class _ReverseGrad(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by -lambda (Ganin & Lempitsky 2015)."""

    @staticmethod
    def forward(ctx, x, lam: float):
        ctx.lam = lam
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return -ctx.lam * grad, None


class CTKDLoss(DistillLoss):
    """Curriculum temperature KD (arXiv 2211.16231), global learned temperature.

    tau = temp_min + temp_range * sigmoid(raw), raw a parameter (init 1.0 as in CTKD) whose gradient
    is reversed and scaled by lambda, so the optimiser raises the KL w.r.t. tau while lowering it
    w.r.t. the student. Value: KL(p_tau || q_tau) * tau^2. lambda follows a cosine from
    ``lambda_min`` to ``lambda_max`` over training, set by ``on_step_begin(step, total_steps)``
    (``set_progress``); before any call it is ``lambda_max``. ``parameters()`` go to the optimiser.
    """

    name = "ctkd"

    def __init__(self, temperature: float = 1.0, temp_min: float = 1.0, temp_range: float = 20.0,
                 init_temperature: float | None = None, lambda_min: float = 0.0, lambda_max: float = 1.0) -> None:
        _no_temperature("ctkd (the temperature is learned; use init_temperature)", temperature)
        super().__init__()
        self.temp_min = check_range("temp_min", temp_min, 0.0, math.inf, lo_open=True, hi_open=True)
        self.temp_range = check_range("temp_range", temp_range, 0.0, math.inf, lo_open=True, hi_open=True)
        self.lambda_min = check_range("lambda_min", lambda_min, 0.0, math.inf, hi_open=True)
        self.lambda_max = check_range("lambda_max", lambda_max, self.lambda_min, math.inf, hi_open=True)
        raw = 1.0
        if init_temperature is not None:
            frac = check_range("init_temperature", init_temperature, temp_min, temp_min + temp_range,
                               lo_open=True, hi_open=True)
            frac = (frac - temp_min) / temp_range
            raw = math.log(frac / (1.0 - frac))
        self.raw_temperature = nn.Parameter(torch.tensor(raw, dtype=torch.float32))
        self.grl_lambda = self.lambda_max

    def set_progress(self, step: int, total_steps: int) -> float:
        """Cosine curriculum of the reversal strength; returns the new lambda."""
        frac = min(max(step / max(total_steps, 1), 0.0), 1.0)
        self.grl_lambda = self.lambda_min + (self.lambda_max - self.lambda_min) * 0.5 * (1 - math.cos(math.pi * frac))
        return self.grl_lambda

    def on_step_begin(self, step: int, total_steps: int) -> None:
        self.set_progress(step, total_steps)

    def on_optimizer_step(self, stats, step: int, total_steps: int) -> dict[str, float]:
        return {"ctkd_temperature": float(self.current_temperature().detach()), "ctkd_lambda": self.grl_lambda}

    def current_temperature(self, device: torch.device | None = None) -> torch.Tensor:
        raw = _ReverseGrad.apply(self.raw_temperature, self.grl_lambda)
        tau = self.temp_min + self.temp_range * torch.sigmoid(raw)
        return tau if device is None else tau.to(device)

    def per_token(self, student_logits, teacher_logits, labels):
        tau = self.current_temperature(student_logits.device)
        return D.fkl_per_token(student_logits / tau, teacher_logits / tau) * tau * tau

    def value_and_grad(self, student_logits, teacher_logits, labels, need_grad, student_logprobs=False):
        sig = torch.sigmoid(self.raw_temperature.detach())
        tau = float(self.temp_min + self.temp_range * sig)
        vals, grad, dtau = CF.ctkd(student_logits, teacher_logits, tau, need_grad, student_logprobs)
        if not need_grad:
            return vals, {}, None, None
        # raw -> (gradient reversal: backward times -lambda) -> tau = temp_min + temp_range * sigmoid(raw)
        g_raw = dtau * (-self.grl_lambda * self.temp_range) * sig * (1.0 - sig)
        return vals, {}, grad, [g_raw.to(self.raw_temperature.dtype).reshape(self.raw_temperature.shape)]


class TAIDLoss(DistillLoss):
    """TAID: KL(p_t || q) with the interpolation parameter t from its own ``TAIDSchedule``.

    Options: the schedule's ``t_start``, ``t_end``, ``alpha``, ``beta``, ``adaptive``; ``signal``
    (``cross_entropy``, the official code's H(p_t, q), or ``kl``) drives the adaptive update;
    ``temperature`` divides both logits before the softmax; ``t`` (optional) fixes the start t.
    ``stats``: ``taid_kl`` and ``taid_ce`` (= KL + H(p_t)) sums over valid tokens. The schedule
    advances in ``on_optimizer_step`` (once per optimizer step, with the all-reduced signal) and is
    saved in ``state_dict()``.
    """

    name = "taid"
    stat_keys = ("taid_kl", "taid_ce")
    option_help = {"t": "start the schedule at this t instead of t_start; None: at t_start"}

    def __init__(self, t_start: float = 0.4, t_end: float = 1.0, alpha: float = 5e-4, beta: float = 0.99,
                 adaptive: bool = True, signal: str = "cross_entropy", temperature: float = 1.0,
                 t: float | None = None) -> None:
        super().__init__(temperature)
        if signal not in ("cross_entropy", "kl"):
            raise OptionError("signal", f"signal must be 'cross_entropy' or 'kl', got {signal!r}")
        self.schedule = TAIDSchedule(t_start, t_end, alpha, beta, adaptive)
        if t is not None:
            self.schedule.t = check_range("t", t, 0.0, 1.0)
        self.signal = signal
        self.signal_key = "taid_ce" if signal == "cross_entropy" else "taid_kl"

    @property
    def t(self) -> float:
        return check_range("t", self.schedule.t, 0.0, 1.0)

    def per_token_with_stats(self, student_logits, teacher_logits, labels):
        kl, ce = taid_per_token(*self._tempered(student_logits, teacher_logits), self.t)
        return kl, {"taid_kl": kl.detach(), "taid_ce": ce}

    def value_and_grad(self, student_logits, teacher_logits, labels, need_grad, student_logprobs=False):
        kl, ce, grad = taid_value_and_grad(student_logits, teacher_logits, self.t, self.temperature, need_grad,
                                           student_logprobs)
        return kl, {"taid_kl": kl, "taid_ce": ce}, grad, ([] if need_grad else None)

    def on_optimizer_step(self, stats, step: int, total_steps: int) -> dict[str, float]:
        """Algorithm 1's update with the step's signal; a skipped (non-finite) step leaves t as it is."""
        signal = math.nan if stats is None else float(stats[self.signal_key])
        if math.isfinite(signal):
            self.schedule.update(signal, step, total_steps)
        return {"taid_t": self.schedule.t, "taid_signal": signal}

    def loss_state(self) -> dict:
        return {"schedule": self.schedule.state_dict()}

    def load_loss_state(self, state: dict) -> None:
        if state:  # {} from a checkpoint written before the loss owned its schedule
            self.schedule.load_state_dict(state["schedule"])

    def extra_repr(self) -> str:
        return f"t={self.schedule.t:.6f}, signal={self.signal!r}, temperature={self.temperature}"
