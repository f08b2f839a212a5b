"""Text-only causal LMs (any ``AutoModelForCausalLM``), plus the padding and LM-head helpers that
the composed adapter shares. Labels come from ``data/template.py``, the one label engine."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from taid_vlm.adapters.base import Adapter, ResponseHidden, gather_response_hidden
from taid_vlm.adapters.registry import register_adapter
from taid_vlm.data.template import TokenizerTemplate
from taid_vlm.data.types import IGNORE_INDEX, Sample, SkipSample

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# HF model_types that `family: auto` maps to this adapter (text-only causal LMs).
TEXT_MODEL_TYPES = (
    "qwen2", "qwen3", "qwen2_moe", "qwen3_moe", "llama", "mistral", "mixtral", "gemma", "gemma2", "phi",
    "phi3", "gpt2", "gpt_neox", "olmo", "olmo2", "cohere", "granite", "smollm3", "stablelm", "starcoder2",
)


def lm_head_view(lm: nn.Module, vocab: int) -> dict[str, Any]:
    """LM-head pieces of ``lm`` cut to the tokenizer's ``vocab`` rows (padded rows dropped) plus the
    config's logit transforms (Gemma-2 soft-capping, Cohere logit scale), as ``ResponseHidden`` kwargs."""
    from taid_vlm.models.peft_student import head_weight

    head = lm.get_output_embeddings()
    cfg = lm.config
    bias = getattr(head, "bias", None)
    return {
        "weight": head_weight(head)[:vocab],  # with LoRA on the head: W + scale * B @ A
        "bias": None if bias is None else bias[:vocab],
        "logit_softcap": getattr(cfg, "final_logit_softcapping", None) or None,
        "logit_scale": float(getattr(cfg, "logit_scale", None) or 1.0),
    }


def lm_body(lm: nn.Module) -> nn.Module:
    """The LM without its head (final norm included): ``base_model`` is the one name every HF
    causal LM agrees on (``model`` for Llama/Qwen, ``transformer`` for GPT-2)."""
    body = lm.base_model
    if body is lm:
        raise ValueError(f"{type(lm).__name__} exposes no body module separate from its LM head")
    return body


def padded_ids(lm: nn.Module, vocab: int) -> list[int] | None:
    """Ids of padded head rows (``>= vocab``), which generation must never pick."""
    rows = lm.get_output_embeddings().weight.shape[0]
    return list(range(vocab, rows)) or None


def pad_right(encodings: list[dict[str, torch.Tensor]], pad_id: int) -> dict[str, torch.Tensor]:
    """Stack ``input_ids``/``attention_mask``/``labels`` padded on the right -> ``[B, L_max]``."""
    fill = {"input_ids": pad_id, "attention_mask": 0, "labels": IGNORE_INDEX}
    out = {}
    for key, value in fill.items():
        seqs = [e[key] for e in encodings]
        out[key] = nn.utils.rnn.pad_sequence(seqs, batch_first=True, padding_value=value)
    return out


def pad_left(seqs: list[torch.Tensor], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad 1-D id tensors for generation -> ``(input_ids [B, L], attention_mask [B, L])``."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    att = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s):] = s
        att[i, width - len(s):] = 1
    return ids, att


def has_image_blocks(sample: Sample) -> bool:
    return bool(sample.images) or any(
        not isinstance(m["content"], str) and any(b.get("type") == "image" for b in m["content"])
        for m in sample.messages
    )


class TextAdapter(Adapter):
    """Any ``AutoModelForCausalLM`` with its tokenizer's (or a configured) chat template."""

    name = "text"
    supports_images = False

    def __init__(self, model: nn.Module, tokenizer: Any, chat_template: str | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.chat_template = chat_template or tokenizer.chat_template
        # Labels come from the one label engine (data/template.py), as for every other adapter.
        self.template = TokenizerTemplate(tokenizer, self.chat_template) if self.chat_template else None
        from taid_vlm.adapters.checks import check_vocab

        check_vocab(model.get_output_embeddings().weight.shape[0], len(tokenizer))

    def check_supports(self, sample: Sample) -> None:
        """ValueError for a sample with images: a text-only model cannot be given image data."""
        if has_image_blocks(sample):
            raise ValueError(f"sample {sample.id!r} has images but the {self.name!r} family is text-only; "
                             "use a VLM or composed model, or text-only data")

    def _require_template(self) -> TokenizerTemplate:
        if self.template is None:
            raise ValueError("the tokenizer has no chat template; set `chat_template` in the model config")
        return self.template

    def encode(self, sample: Sample, max_length: int) -> dict[str, torch.Tensor]:
        """``input_ids/attention_mask/labels [L]`` with labels on the assistant tokens only."""
        if has_image_blocks(sample):
            raise SkipSample("image_for_text_model", f"sample {sample.id!r} has images")
        return self._require_template().encode(sample.messages, max_length)

    def collate(self, encodings: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        return pad_right(encodings, self.tokenizer.pad_token_id)

    def _hidden(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        # Packed text rows (data.format: text) carry position_ids and no attention_mask: transformers
        # then masks attention per document (taid_vlm.data.packing).
        out = lm_body(self.model)(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"),
                                  position_ids=batch.get("position_ids"), use_cache=False)
        return out[0]

    def response_hidden(self, batch: dict[str, torch.Tensor]) -> ResponseHidden:
        """``hidden [B, L, H]`` of the LM body (final norm applied) -> response rows ``[N, H]``."""
        rows, targets, index = gather_response_hidden(self._hidden(batch), batch["labels"])
        return ResponseHidden(hidden=rows, targets=targets, sample_index=index,
                              **lm_head_view(self.model, len(self.tokenizer)))

    def _generate_ids(self, seqs: list[torch.Tensor], max_new_tokens: int, **kw: Any) -> list[str]:
        ids, att = pad_left(seqs, self.tokenizer.pad_token_id)
        dev = next(self.model.parameters()).device
        kw.setdefault("do_sample", False)
        kw.setdefault("suppress_tokens", padded_ids(self.model, len(self.tokenizer)))
        with torch.no_grad():
            out = self.model.generate(input_ids=ids.to(dev), attention_mask=att.to(dev), max_new_tokens=max_new_tokens,
                                      pad_token_id=self.tokenizer.pad_token_id,
                                      eos_token_id=self.tokenizer.eos_token_id, **kw)
        return self.tokenizer.batch_decode(out[:, ids.shape[1]:], skip_special_tokens=True)

    def generate(self, samples: list[Sample], max_new_tokens: int = 32, **gen_kwargs: Any) -> list[str]:
        seqs = []
        for s in samples:
            self.check_supports(s)
            seqs.append(self._require_template().encode_prompt(s.messages)["input_ids"])
        return self._generate_ids(seqs, max_new_tokens, **gen_kwargs)


def resolve_tokenizer(tokenizer: Any, path: str | None, trust_remote_code: bool = False) -> Any:
    """A tokenizer object from an object, a directory, or the model ``path``."""
    if tokenizer is not None and not isinstance(tokenizer, str):
        return tokenizer
    source = tokenizer or path
    if not source:
        raise ValueError("tokenizer: set `tokenizer` (a directory) when building a model from `config`")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)


@register_adapter("text", model_types=TEXT_MODEL_TYPES)
def build_text_adapter(path: str | None = None, config: dict | None = None, tokenizer: Any = None,
                       dtype: str = "float32", trust_remote_code: bool = False, chat_template: str | None = None,
                       attn_implementation: str | None = None, **load_kwargs: Any) -> TextAdapter:
    """``path`` (pretrained) or ``config`` (architecture dict, random weights; see models.factory).
    ``load_kwargs`` go to ``from_pretrained`` (a 4-bit ``quantization_config``, see models.peft_student)."""
    from taid_vlm.models.factory import build_text_lm

    tok = resolve_tokenizer(tokenizer, path, trust_remote_code)
    kwargs: dict[str, Any] = {"attn_implementation": attn_implementation} if attn_implementation else {}
    if path:
        kwargs.update(dtype=DTYPES[dtype], trust_remote_code=trust_remote_code, **load_kwargs)
        model = build_text_lm({"path": path}, tok, **kwargs)
    elif config is not None:
        model = build_text_lm(config, tok, **kwargs).to(DTYPES[dtype])
    else:
        raise ValueError("text model: set `path` to a pretrained model or `config` to build one")
    return TextAdapter(model, tok, chat_template)
