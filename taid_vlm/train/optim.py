"""Optimizer and LR schedule: per-part trainability and learning rates come from config."""

from __future__ import annotations

import math

import torch
from torch import nn

from taid_vlm.config import StudentConfig, TrainConfig


def apply_trainability(parts: dict[str, nn.Module], student: StudentConfig) -> dict[str, bool]:
    """Freeze the parts the config says not to train; returns {part: trainable}."""
    wanted = {"vision": student.train_vision, "projector": student.train_projector, "lm": student.train_lm}
    result = {}
    for name, module in parts.items():
        on = wanted.get(name, True)
        for p in module.parameters():
            if p.is_floating_point():  # packed 4-bit weights (QLoRA bases) are uint8 and never train
                p.requires_grad_(on)
        result[name] = on
    return result


def _no_decay(name: str, param: nn.Parameter) -> bool:
    # Biases and norm gains are not decayed (the usual AdamW practice).
    return param.ndim < 2 or "norm" in name.lower()


def param_groups(
    parts: dict[str, nn.Module], train: TrainConfig, extra: nn.Module | None = None
) -> list[dict]:
    """AdamW groups per part (own LR, decay/no-decay), plus trainable loss parameters (CTKD)."""
    lrs = {"vision": train.lr_vision, "projector": train.lr_projector, "lm": train.lr_lm}
    groups, seen = [], set()
    for part, module in parts.items():
        decay, no_decay = [], []
        for name, p in module.named_parameters():
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            (no_decay if _no_decay(name, p) else decay).append(p)
        lr = lrs.get(part) or train.lr
        if decay:
            groups.append({"params": decay, "lr": lr, "weight_decay": train.weight_decay, "part": part})
        if no_decay:
            groups.append({"params": no_decay, "lr": lr, "weight_decay": 0.0, "part": part})
    if extra is not None:
        params = [p for p in extra.parameters() if p.requires_grad and id(p) not in seen]
        if params:
            groups.append({"params": params, "lr": train.lr, "weight_decay": 0.0, "part": "loss"})
    if not groups:
        raise ValueError("student: no trainable parameters (train_vision/train_projector/train_lm all off?)")
    return groups


def lr_lambda(train: TrainConfig, total_steps: int):
    """Multiplier of the peak LR at optimizer step ``s``: linear warm-up then cosine/linear/constant."""
    warm = train.warmup_steps

    def fn(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        if train.scheduler == "constant":
            return 1.0
        progress = min(1.0, (step - warm) / max(1, total_steps - warm))
        if train.scheduler == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return fn


def adamw_kernel(groups: list[dict]) -> dict[str, bool]:
    """``{"fused": True}`` when every parameter is a floating-point tensor on a device where torch has
    the fused AdamW kernel (CPU and CUDA among them), else ``{"foreach": True}``.

    The single-tensor loop torch falls back to on CPU launches ~10 kernels per parameter per step;
    fused does one pass over each parameter (same update rule, same numbers to rounding).
    """
    params = [p for g in groups for p in g["params"]]
    try:
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

        fused_devices = set(_get_fused_kernels_supported_devices())
    except ImportError:  # older torch: the documented default (foreach where supported)
        fused_devices = set()
    ok = params and all(p.is_floating_point() and p.device.type in fused_devices for p in params)
    return {"fused": True} if ok else {"foreach": True}


def build_optimizer(groups: list[dict], train: TrainConfig, total_steps: int):
    """AdamW (fused kernel where torch has one, see ``adamw_kernel``) + LambdaLR schedule.

    The flag is chosen on the parameters' device type at build time; accelerate may then move them to
    its device in ``prepare``, where torch has the fused kernel too (CUDA, XPU, MPS, HPU).
    """
    opt = torch.optim.AdamW(groups, lr=train.lr, betas=(0.9, 0.999), eps=1e-8, **adamw_kernel(groups))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(train, total_steps))
    return opt, sched


def clip_or_measure(acc, params: list[nn.Parameter], max_norm: float) -> float:
    """Clip the gradients of ``params`` to ``max_norm`` (> 0) and return their L2 norm before
    clipping; with ``max_norm <= 0`` only measure it (for the log and the non-finite check), leaving
    the gradients untouched. ``clip_grad_norm_(params, inf)`` would also multiply every gradient by
    1.0: a second pass over all of them per step. Sharded engines (FSDP, DeepSpeed, XLA) keep
    accelerate's clip with an infinite bound, since their norm needs the engine's reduction."""
    from accelerate.utils import DistributedType

    if max_norm > 0 or acc.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED,
                                                DistributedType.XLA):
        return float(acc.clip_grad_norm_(params, max_norm if max_norm > 0 else math.inf))
    acc.unscale_gradients()  # fp16: the norm of the true gradients, as accelerate's clip measures it
    grads = [p.grad for p in params if p.grad is not None]
    return float(torch.nn.utils.get_total_norm(grads, norm_type=2.0)) if grads else 0.0
