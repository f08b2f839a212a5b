"""LoRA / DoRA / QLoRA students through the peft library (``student.peft``).

Entry point: ``apply_peft(adapter, student_cfg)``, called once the student is built and its parts'
trainability set, before the optimizer is created. It wraps the adapter's model in place with
``peft.get_peft_model``: the LoRA layers (and the ``modules_to_save`` copies) are injected into the
same ``nn.Module`` objects the adapter already holds, so the family's forward, the fused loss,
sampling and DDP see the adapted student without any change. The ``PeftModel`` is kept on the
adapter as ``adapter.peft_model`` for checkpoints and the final save; a later wrapper (torchao QAT,
``student.quantization``) chains after this call on ``adapter.model``.

Scope of the adapters: the student's language model (``adapter.parts()["lm"]``). In a VLM the
other parts follow ``train_vision`` / ``train_projector``: a trained part becomes a peft
``modules_to_save`` entry (trained in full, saved with the adapter), a frozen one stays frozen.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from taid_vlm.config import ConfigError, PeftConfig, StudentConfig

ADAPTER = "default"  # peft's adapter name; one adapter per student


def quantization_kwargs(cfg: StudentConfig, device: torch.device | str = "cpu") -> dict[str, Any]:
    """``from_pretrained`` keywords for a 4-bit base (``student.peft.load_in_4bit``), else ``{}``:
    a bitsandbytes ``BitsAndBytesConfig`` computing in ``student.dtype``, loaded straight onto
    ``device`` (this process's device; a device map, as TRL and peft load QLoRA bases)."""
    if cfg.peft is None or not cfg.peft.load_in_4bit:
        return {}
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ConfigError("student.peft.load_in_4bit: needs bitsandbytes (pip install 'taid-vlm[peft]')") from None
    from transformers import BitsAndBytesConfig

    from taid_vlm.adapters.text import DTYPES

    bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=cfg.peft.quant_type,
                             bnb_4bit_use_double_quant=cfg.peft.double_quant,
                             bnb_4bit_compute_dtype=DTYPES[cfg.dtype])
    return {"quantization_config": bnb, "device_map": {"": str(device)}}


def _prefix(model: nn.Module, lm: nn.Module) -> str:
    """Dotted name of ``lm`` inside ``model`` ("" when the model is the LM)."""
    for name, module in model.named_modules():
        if module is lm:
            return name
    raise ValueError("the student's 'lm' part is not a submodule of its model")


def _targeted_linears(lm: nn.Module, peft: PeftConfig) -> list[tuple[str, nn.Linear]]:
    """The LM's linears that get adapters (peft's rule: a name equal to, or ending in ".", a target;
    "all-linear": every linear but the output layer)."""
    head = lm.get_output_embeddings()
    names = [] if peft.target_modules == "all-linear" else list(peft.target_modules)
    found = []
    for name, module in lm.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        if names and not any(name == n or name.endswith("." + n) for n in names):
            continue
        if not names and module is head:
            continue
        found.append((name, module))
    return found


def adapter_counts(lm: nn.Module, peft: PeftConfig) -> dict[str, int]:
    """Parameter counts for the memory plan (``lm`` may sit on the meta device): ``adapter`` (LoRA
    A and B, DoRA's magnitudes), ``quantized`` (weights bitsandbytes stores in 4 bits with
    ``load_in_4bit``: every linear but the LM head) and ``saved`` (``modules_to_save`` copies)."""
    adapter = sum(peft.r * (m.in_features + m.out_features) + m.out_features * peft.use_dora
                  for _, m in _targeted_linears(lm, peft))
    head = lm.get_output_embeddings()
    quantized = sum(m.weight.numel() for m in lm.modules() if isinstance(m, nn.Linear) and m is not head)
    saved = {id(p): p.numel() for n, m in lm.named_modules() if n and any(n == s or n.endswith("." + s)
             for s in peft.modules_to_save) for p in m.parameters()}
    return {"adapter": adapter, "quantized": quantized if peft.load_in_4bit else 0, "saved": sum(saved.values())}


def _lm_targets(model: nn.Module, lm: nn.Module, prefix: str, peft: PeftConfig) -> list[str] | str:
    """Module names for peft's ``target_modules``, restricted to the LM. A text student is the LM
    itself: peft's own matching applies ("all-linear" skips the output layer). In a VLM, peft's
    "all-linear" would also reach the tower and projector, so the LM's linears are listed by name."""
    if not prefix:
        return peft.target_modules
    found = [f"{prefix}.{name}" for name, _ in _targeted_linears(lm, peft)]
    if not found:
        raise ConfigError(f"student.peft.target_modules: no linear module of the LM matches {peft.target_modules!r}")
    return found


def _lora_config(model: nn.Module, lm: nn.Module, parts: dict[str, nn.Module], cfg: StudentConfig):
    from peft import LoraConfig

    peft = cfg.peft
    prefix = _prefix(model, lm)
    lm_saved = [f"{prefix}.{n}" if prefix else n for n in peft.modules_to_save]
    # The other parts: trained in full when their train_* flag is on (saved beside the adapter).
    on = {"vision": cfg.train_vision, "projector": cfg.train_projector}
    saved_parts = [_prefix(model, m) for name, m in parts.items() if name != "lm" and on.get(name, True)]
    return LoraConfig(
        r=peft.r, lora_alpha=peft.alpha, lora_dropout=peft.dropout, use_dora=peft.use_dora,
        use_rslora=peft.use_rslora, target_modules=_lm_targets(model, lm, prefix, peft),
        modules_to_save=(lm_saved + saved_parts) or None, bias="none",
        task_type="CAUSAL_LM" if not prefix else None,
    )


def apply_peft(adapter: Any, cfg: StudentConfig) -> Any:
    """Inject ``cfg.peft``'s LoRA into ``adapter.model`` in place; returns the ``PeftModel``, also
    stored as ``adapter.peft_model``. Only adapter weights and ``modules_to_save`` stay trainable.

    Raises ``ConfigError`` naming the field for targets that match nothing and for an adapted LM head
    that the fused loss cannot read as one weight matrix (DoRA or dropout on it)."""
    from peft import get_peft_model

    model = adapter.model
    parts = adapter.parts()
    lora = _lora_config(model, parts["lm"], parts, cfg)
    if cfg.peft.load_in_4bit:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    try:
        peft_model = get_peft_model(model, lora, adapter_name=ADAPTER)
    except ValueError as err:  # peft: "Target modules ... not found in the base model"
        raise ConfigError(f"student.peft.target_modules: {err}") from None
    if peft_model.get_base_model() is not adapter.model:
        raise RuntimeError("peft did not wrap the student's model in place")
    _check_head(parts["lm"], cfg.peft)
    if cfg.gradient_checkpointing and hasattr(adapter.model, "enable_input_require_grads"):
        # Reentrant checkpointing needs an input that requires grad; the frozen embeddings give none.
        adapter.model.enable_input_require_grads()
    adapter.peft_model = peft_model
    return peft_model


def _check_head(lm: nn.Module, peft: PeftConfig) -> None:
    from peft.tuners.lora import LoraLayer

    head = lm.get_output_embeddings()
    if not isinstance(head, LoraLayer):
        return
    # The fused loss takes the head as one [V, H] matrix, W + scale * B @ A (head_weight). That
    # equals the layer's output only when the adapter is linear in W: no DoRA norm, no dropout.
    if peft.use_dora:
        raise ConfigError("student.peft.use_dora: DoRA on the LM head has no single weight matrix for the fused "
                          "loss; drop lm_head from target_modules (or list it in modules_to_save)")
    if peft.dropout > 0:
        raise ConfigError("student.peft.dropout: dropout on the LM head's adapter makes its output differ from "
                          "one weight matrix; set dropout: 0 or drop lm_head from target_modules")
    if peft.merge and head.get_base_layer().weight is lm.get_input_embeddings().weight:
        # Merging W + BA into a head tied to the input embeddings would change the embeddings too.
        raise ConfigError("student.peft.merge: the LM head shares its weight with the input embeddings, so merging "
                          "its adapter would change the embeddings; keep the adapter unmerged or drop lm_head "
                          "from target_modules")


def head_weight(head: nn.Module) -> torch.Tensor:
    """The ``[V, H]`` weight an LM head applies: ``head.weight``, or for a peft LoRA layer the base
    weight plus each active adapter's ``scale * B @ A`` (differentiable in A and B)."""
    if not type(head).__module__.startswith("peft."):
        return head.weight
    from peft.tuners.lora import LoraLayer

    if not isinstance(head, LoraLayer):
        return head.weight  # modules_to_save: the wrapper forwards .weight to the trained copy
    weight = head.get_base_layer().weight
    if head.disable_adapters or head.merged:
        return weight
    for name in head.active_adapters:
        if name in head.lora_A:
            weight = weight + head.get_delta_weight(name).to(weight.dtype)
    return weight


class AdapterState(nn.Module):
    """What a checkpoint holds of a peft student: the adapter and ``modules_to_save`` weights
    (peft's ``get_peft_model_state_dict``), never the frozen base. Passed to
    ``train.checkpoint.save_checkpoint`` / ``load_checkpoint`` in place of the model."""

    def __init__(self, peft_model: nn.Module) -> None:
        super().__init__()
        self._peft = [peft_model]  # a list, so the model is not registered as a submodule

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        from peft import get_peft_model_state_dict

        # The frozen head/embeddings are part of the base, which a checkpoint never holds.
        return get_peft_model_state_dict(self._peft[0], adapter_name=ADAPTER, save_embedding_layers=False)

    def load_state_dict(self, state: dict[str, torch.Tensor], strict: bool = True, assign: bool = False):
        from peft import set_peft_model_state_dict

        expected = set(self.state_dict())
        if set(state) != expected:
            bad = sorted(set(state) ^ expected)[:3]
            raise RuntimeError(f"the checkpoint's adapter does not match this student.peft config: {bad}")
        set_peft_model_state_dict(self._peft[0], state, adapter_name=ADAPTER)
        return nn.modules.module._IncompatibleKeys([], [])


def checkpoint_module(adapter: Any, model: nn.Module) -> nn.Module:
    """The module whose ``state_dict`` a checkpoint stores: ``AdapterState`` for a peft student,
    else ``model`` (the whole student)."""
    peft_model = getattr(adapter, "peft_model", None)
    return model if peft_model is None else AdapterState(peft_model)


def frozen_base_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The base weights of a peft-wrapped ``model`` under their original names: adapter tensors
    dropped, ``base_layer`` unwrapped, ``modules_to_save`` parts at their untrained originals.
    peft has no call for this (``unload`` keeps the trained ``modules_to_save`` copies)."""
    out = {}
    for key, value in model.state_dict().items():
        if ".lora_" in key or ".modules_to_save." in key:
            continue
        out[key.replace(".base_layer.", ".").replace(".original_module.", ".")] = value
    return out


def save_peft_student(adapter: Any, cfg: StudentConfig, final: str | Path) -> None:
    """Write the final peft student into ``final``: the adapter (``adapter_config.json`` +
    ``adapter_model.safetensors``, loadable by ``PeftModel`` / ``AutoPeftModelForCausalLM``) and the
    tokenizer/processor. Its base is ``student.path`` when the student was loaded from one, else
    the frozen base written to ``final/base``. With ``student.peft.merge`` the merged student is
    then written to ``final/merged`` by the family's own export (a plain transformers model)."""
    final = Path(final)
    peft_model = adapter.peft_model
    if cfg.path and adapter.name == "text":  # an AutoModelForCausalLM checkpoint, unchanged by training
        base = str(Path(cfg.path).resolve())
    else:
        base = str((final / "base").resolve())
        adapter.model.save_pretrained(base, state_dict=frozen_base_state(adapter.model), safe_serialization=True)
        (adapter.processor or adapter.tokenizer).save_pretrained(base)
    peft_model.peft_config[ADAPTER].base_model_name_or_path = base
    peft_model.save_pretrained(str(final), safe_serialization=True, save_embedding_layers=False)
    (adapter.processor or adapter.tokenizer).save_pretrained(str(final))
    if cfg.peft.merge:
        merged = peft_model.merge_and_unload()  # in place: adapter.model now holds the merged weights
        if merged is not adapter.model:
            adapter.model = merged
        adapter.save(str(final / "merged"))
