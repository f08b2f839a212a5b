"""Quantization-aware training (QAT) of the student with torchao, and its export as the real
quantized model.

``prepare_student`` swaps the target linears for torchao's ``FakeQuantizedLinear`` (``quantize_``
with ``QATConfig(base, step="prepare")``): the forward simulates the deployed integer numerics,
gradients pass straight through, and the parameters stay the very same float ``Parameter``
objects (so checkpoints, resume, DDP and the optimizer see an ordinary student). It runs after
the student is built and before the optimizer; a peft LoRA adapter may then wrap the
fake-quantized linears (``config.check_quantization_peft``).

``train.qat.export_quantized`` turns the float export of the trained student (written by the adapter's own
``save``, whatever its family's layout) into the real quantized model: it reloads that folder,
applies the same torchao base config to the same targets (what ``QATConfig(step="convert")`` does:
swap back to ``nn.Linear``, then quantize) and saves it through transformers' torchao
integration, so that ``from_pretrained(dir)`` loads it back quantized. The weights go into
safetensors (torchao tensors flattened by ``torchao.prototype.safetensors``; no pickle).

No hand-written fake quantization: torchao owns the numerics. Only the CPU-capable schemes that
torchao's QAT supports end to end are offered (``IntxUnpackedToInt8Tensor``; int4 values are
held one per int8 byte, torchao's ``unpacked_to_int8`` layout).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from taid_vlm.config import ConfigError, StudentQuantizationConfig


def base_config(q: StudentQuantizationConfig) -> Any:
    """The torchao post-training config that ``q.scheme`` trains for and converts with."""
    import torch
    from torchao.quantization import (
        Int8DynamicActivationIntxWeightConfig,
        IntxWeightOnlyConfig,
        PerAxis,
        PerGroup,
    )

    if q.scheme == "int8_dynamic_int4_weight":
        return Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4,
                                                     weight_granularity=PerGroup(q.group_size))
    if q.scheme == "int8_weight_only":
        return IntxWeightOnlyConfig(weight_dtype=torch.int8, granularity=PerAxis(0))
    raise ConfigError(f"student.quantization.scheme: unknown scheme {q.scheme!r}")


def target_linears(model: nn.Module, parts: dict[str, nn.Module], q: StudentQuantizationConfig) -> dict[str, nn.Linear]:
    """``{qualified name in model: linear}`` of the linears inside the parts ``q.targets`` names; the
    output head never (the fused loss reads its weight as a matrix, and it is the layer most
    sensitive to quantization). Raises ``ConfigError`` when a target part is missing or has none."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    wanted: set[int] = set()
    for part in q.targets:
        if part not in parts:
            raise ConfigError(f"student.quantization.targets: this student has no {part!r} part "
                              f"(parts: {', '.join(parts)})")
        found = [m for m in parts[part].modules() if isinstance(m, nn.Linear) and m is not head]
        if not found:
            raise ConfigError(f"student.quantization.targets: the {part!r} part has no linear layer to quantize")
        wanted |= {id(m) for m in found}
    return {name: m for name, m in model.named_modules() if id(m) in wanted}


def _check_group_size(linears: dict[str, nn.Linear], q: StudentQuantizationConfig) -> None:
    if q.scheme != "int8_dynamic_int4_weight":
        return
    bad = [(n, m.in_features) for n, m in linears.items() if m.in_features % q.group_size]
    if bad:
        raise ConfigError(f"student.quantization.group_size: {q.group_size} does not divide the in_features of "
                          f"{len(bad)} target linears (first: {bad[0][0]} with {bad[0][1]}); choose a divisor")


def prepare_student(model: nn.Module, parts: dict[str, nn.Module], q: StudentQuantizationConfig) -> list[str]:
    """Fake-quantize the target linears of ``model`` in place; returns their names.

    The swapped modules keep the original weight/bias ``Parameter`` objects and state-dict keys,
    and the fake quantizers hold no state (scales are recomputed from the weights each forward),
    so a checkpoint of the prepared model is a float checkpoint and resumes bitwise.
    """
    from torchao.quantization import quantize_
    from torchao.quantization.qat import QATConfig

    linears = target_linears(model, parts, q)
    _check_group_size(linears, q)
    ids = {id(m) for m in linears.values()}
    quantize_(model, QATConfig(base_config(q), step="prepare"), filter_fn=lambda m, _fqn: id(m) in ids)
    return list(linears)


def quantize_converted(model: nn.Module, parts: dict[str, nn.Module], q: StudentQuantizationConfig) -> list[str]:
    """Quantize the target linears of a float ``model`` (no fake quantizers) with ``q``'s base config
    in place, so they hold torchao quantized tensors; attach transformers' torchao quantizer so that
    ``save_pretrained`` writes them (flattened into safetensors) and records ``quantization_config``
    for ``from_pretrained``. Returns the quantized linears' names."""
    from torchao.quantization import quantize_
    from transformers import TorchAoConfig
    from transformers.quantizers.auto import AutoHfQuantizer

    linears = target_linears(model, parts, q)
    ids = {id(m) for m in linears.values()}
    base = base_config(q)
    quantize_(model, base, filter_fn=lambda m, _fqn: id(m) in ids)
    # Loading a pre-quantized checkpoint, transformers treats every linear not listed here as quantized.
    keep = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and id(m) not in ids]
    qc = TorchAoConfig(base, modules_to_not_convert=keep)
    model.config.quantization_config = qc
    # What from_pretrained(..., quantization_config=TorchAoConfig) attaches; save_pretrained asks it
    # to flatten the torchao tensors for safetensors.
    model.hf_quantizer = AutoHfQuantizer.from_config(qc, pre_quantized=True)
    return list(linears)
