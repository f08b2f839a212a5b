"""Where the frozen teacher lives (``teacher.placement``), through accelerate's and torch's engines.

- ``replicated``: a whole copy on each process's device (small teachers; today's default).
- ``dispatched``: accelerate big-model dispatch — ``infer_auto_device_map`` over ``max_memory``
  then ``dispatch_model``; what fits neither the GPUs nor ``max_memory["cpu"]`` is offloaded to
  ``teacher.offload_folder`` and streamed in per module during the forward.
- ``sharded``: the decoder layers / vision blocks (``_no_split_modules``) sharded with FSDP2's
  ``fully_shard`` over the student's process group, or the model handed to DeepSpeed ZeRO-3 as an
  inference engine; no optimizer state either way. Needs an FSDP or DeepSpeed launch on GPUs.

Every check that can fail runs in ``check_placement`` before any weights are loaded.
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from taid_vlm.config import ConfigError, TeacherConfig

_QUANT_LIBS = {"8bit": "torchao", "4bit": "torchao"}


def distributed_type(acc: Any) -> str:
    """accelerate's engine name for this launch: NO, MULTI_CPU, MULTI_GPU, FSDP, DEEPSPEED, ..."""
    return str(getattr(acc.distributed_type, "value", acc.distributed_type))


def check_engine(acc: Any, cfg: Any) -> None:
    """Refuse a student engine this package cannot drive correctly, before weights load."""
    if distributed_type(acc) != "DEEPSPEED":
        return
    plugin = acc.state.deepspeed_plugin
    stage = int((plugin.deepspeed_config.get("zero_optimization") or {}).get("stage", 0)) if plugin else 0
    if stage == 3:
        # ZeRO-3 repartitions the LM head as soon as the student's forward returns, but the fused loss
        # reads that weight after it: the result would be an empty matrix, not a gradient.
        raise ConfigError("accelerate config: DeepSpeed ZeRO-3 shards the student's LM head, which the distillation "
                          "loss reads outside the forward (not supported yet); use FSDP2 "
                          "(configs/accelerate/fsdp.yaml) or ZeRO stage 1/2")
    ga = getattr(plugin, "gradient_accumulation_steps", None)
    if ga not in (None, "auto", cfg.train.grad_accum):
        raise ConfigError(f"train.grad_accum: {cfg.train.grad_accum} but the DeepSpeed config accumulates {ga} "
                          "micro-batches per step; set them equal")


def check_placement(tcfg: TeacherConfig, acc: Any) -> None:
    """Refuse a placement this launch cannot run, naming the setting (before weights are loaded)."""
    engine = distributed_type(acc)
    if tcfg.placement == "sharded":
        if engine not in ("FSDP", "DEEPSPEED"):
            raise ConfigError(
                f"teacher.placement: sharded wraps the teacher with the student's engine, but this launch uses "
                f"{engine} on {acc.device.type}; launch with an FSDP or DeepSpeed accelerate config on GPUs "
                "(configs/accelerate/fsdp.yaml, deepspeed_zero3.yaml) or use placement replicated / dispatched")
        if engine == "DEEPSPEED" and importlib.util.find_spec("deepspeed") is None:
            raise ConfigError("teacher.placement: sharded under DeepSpeed needs the deepspeed package "
                              "(pip install deepspeed)")
    if tcfg.placement == "dispatched" and acc.num_processes > 1 and acc.device.type == "cuda":
        raise ConfigError(f"teacher.placement: dispatched spreads one teacher over the node's GPUs for one training "
                          f"process, but this launch has {acc.num_processes}, each of which would place its own copy; "
                          "use placement sharded, or launch one process")
    if tcfg.quantization != "none":
        lib = _QUANT_LIBS[tcfg.quantization]
        if importlib.util.find_spec(lib) is None:
            raise ConfigError(f"teacher.quantization: {tcfg.quantization} needs {lib} (pip install {lib}), "
                              "which is not installed; or set teacher.quantization=none")
        if acc.device.type != "cuda":
            raise ConfigError(f"teacher.quantization: {tcfg.quantization} weight-only kernels need a GPU; "
                              f"this run is on {acc.device.type}")


def normalise_max_memory(max_memory: dict[str, Any] | None) -> dict[int | str, Any] | None:
    """YAML keys are strings; accelerate wants GPU indices as ints and ``cpu`` / ``disk`` as names."""
    if max_memory is None:
        return None
    out: dict[int | str, Any] = {}
    for k, v in max_memory.items():
        key = int(k) if str(k).isdigit() else str(k)
        if isinstance(key, str) and key not in ("cpu", "disk", "mps"):
            raise ConfigError(f"teacher.max_memory: unknown device {k!r}; use GPU indices (0, 1, ...), cpu or disk")
        out[key] = v
    return out


def dispatch_teacher(model: nn.Module, tcfg: TeacherConfig, device: torch.device) -> dict[str, Any]:
    """Spread ``model`` over ``teacher.max_memory`` (GPUs, then CPU RAM, then disk) with accelerate's
    big-model dispatch; returns the device map. Decoder layers and vision blocks are never split."""
    from accelerate import dispatch_model, infer_auto_device_map
    from accelerate.utils import get_balanced_memory

    max_memory = normalise_max_memory(tcfg.max_memory)
    no_split = list(getattr(model, "_no_split_modules", None) or [])
    if max_memory is None and torch.cuda.device_count() > 1:
        # Spread evenly and keep GPU 0 light: the student trains there (the memory plan assumes it).
        max_memory = get_balanced_memory(model, no_split_module_classes=no_split, low_zero=True)
    device_map = infer_auto_device_map(model, max_memory=max_memory, no_split_module_classes=no_split)
    if device_map.get("") == "disk":
        raise ConfigError(f"teacher.max_memory: {tcfg.max_memory} holds not even the teacher's first block; "
                          "raise it (at least one decoder layer / vision block must fit in memory)")
    if "disk" in device_map.values() and not tcfg.offload_folder:
        raise ConfigError("teacher.offload_folder: the teacher does not fit teacher.max_memory and part of it goes "
                          "to disk; set a folder for the offloaded weights (or raise teacher.max_memory)")
    dispatch_model(model, device_map=device_map, main_device=device, offload_dir=tcfg.offload_folder)
    return device_map


def shard_teacher(model: nn.Module, acc: Any) -> nn.Module:
    """Shard the frozen teacher with the student's engine (GPU launches only; see ``check_placement``).

    FSDP2: each ``_no_split_modules`` block is ``fully_shard``-ed over the data-parallel mesh; the
    remaining parameters (embeddings, final norm, LM head) stay whole on every device, because the
    adapters read the head weight directly and call the LM body, not the root forward.
    DeepSpeed: a ZeRO-3 inference engine (no optimizer), whose per-module hooks gather parameters.
    """
    if distributed_type(acc) == "DEEPSPEED":
        import deepspeed

        ds_cfg = {"zero_optimization": {"stage": 3}, "train_micro_batch_size_per_gpu": 1,
                  "bf16": {"enabled": next(model.parameters()).dtype == torch.bfloat16}}
        engine, *_ = deepspeed.initialize(model=model, config=ds_cfg)
        return engine.module
    from torch.distributed.fsdp import fully_shard

    no_split = set(getattr(model, "_no_split_modules", None) or [])
    if not no_split:
        raise ConfigError(f"teacher.placement: sharded needs the teacher class to declare _no_split_modules "
                          f"({type(model).__name__} declares none); use placement dispatched")
    blocks = [m for m in model.modules() if type(m).__name__ in no_split]
    for block in blocks:
        fully_shard(block.to(acc.device))
        # Each block is its own FSDP root (the adapters call the body, never the model's forward), and
        # a root keeps its parameters gathered after forward, expecting a backward. The frozen teacher
        # has none: without this hook every block would stay gathered, i.e. the whole teacher.
        block.register_forward_hook(_reshard_after_forward)
    sharded = {id(p) for b in blocks for p in b.parameters()}
    for p in model.parameters():  # what no block owns: moved whole, parameter by parameter
        if id(p) not in sharded:
            p.data = p.data.to(acc.device)
    for b in model.buffers():
        b.data = b.data.to(acc.device)
    return model


def _reshard_after_forward(module: nn.Module, _args: Any, _output: Any) -> None:
    module.reshard()


def place_teacher(model: nn.Module, tcfg: TeacherConfig, acc: Any) -> dict[str, Any] | None:
    """Freeze ``model`` and put it where ``teacher.placement`` says; returns the device map when
    dispatched (``None`` otherwise). The teacher is never wrapped for DDP (STYLE.md 5)."""
    model.eval().requires_grad_(False)
    if tcfg.quantization != "none":
        quantize_teacher(model, tcfg.quantization)
    if tcfg.placement == "dispatched":
        return dispatch_teacher(model, tcfg, acc.device)
    if tcfg.placement == "sharded":
        shard_teacher(model, acc)
        return None
    model.to(acc.device)
    return None


def quantize_teacher(model: nn.Module, mode: str) -> None:
    """Weight-only int8 / int4 quantization of the teacher's linear layers with torchao; the LM head
    stays in its dtype because the fused loss reads its weight as a matrix."""
    from torchao.quantization import Int4WeightOnlyConfig, Int8WeightOnlyConfig, quantize_

    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    config = Int8WeightOnlyConfig() if mode == "8bit" else Int4WeightOnlyConfig()
    quantize_(model, config, filter_fn=lambda m, _fqn: isinstance(m, nn.Linear) and m is not head)


@contextlib.contextmanager
def teacher_context(model: nn.Module, device: torch.device) -> Iterator[None]:
    """Context for one teacher forward + LM-head read: an offloaded head (dispatched placement) is
    loaded on ``device`` for the duration; otherwise nothing happens."""
    from accelerate.utils import has_offloaded_params
    from accelerate.utils.modeling import align_module_device

    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    offloaded = head is not None and has_offloaded_params(head)
    with align_module_device(head, device) if offloaded else contextlib.nullcontext():
        yield
