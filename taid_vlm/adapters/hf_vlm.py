"""Hugging Face VLMs (``AutoModelForImageTextToText``) behind the adapter view.

Each family (LLaVA, LLaVA-NeXT, LLaVA-OneVision, Qwen2-VL, Qwen2.5-VL, Qwen3-VL, InternVL,
Idefics3/SmolVLM, PaliGemma, Gemma 3, Mistral 3) keeps its own processor, chat template and
image-token rules; what differs is data in ``vlm_families``.
Labels come from prefix rendering (``taid_vlm.data.template``) over the *processed* token ids, so
they are right whatever the processor expands an image into.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from torch import nn

from taid_vlm.adapters.base import Adapter, ResponseHidden, gather_response_hidden
from taid_vlm.adapters.composed import load_image
from taid_vlm.adapters.registry import register_adapter
from taid_vlm.adapters.text import padded_ids
from taid_vlm.adapters.vlm_families import FAMILIES, FamilyRule, family_rule
from taid_vlm.data.collate import pad_sequences
from taid_vlm.data.template import count_images, encode_conversation, encode_prompt
from taid_vlm.data.types import Sample, SkipSample


def _attr(root: nn.Module, path: str) -> nn.Module:
    for name in path.split("."):
        root = getattr(root, name)
    return root


def _pad_images(tensors: list[torch.Tensor | None]) -> torch.Tensor:
    """Per-sample ``[1, n_i, ...]`` (or ``None``) -> ``[B, max n_i, ...]`` padded with zero images."""
    ref = next(t for t in tensors if t is not None)
    width = max(t.shape[1] for t in tensors if t is not None)
    out = torch.zeros((len(tensors), width, *ref.shape[2:]), dtype=ref.dtype)
    for i, t in enumerate(tensors):
        if t is not None:
            out[i, : t.shape[1]] = t[0]
    return out


def _cat_padded(tensors: list[torch.Tensor]) -> torch.Tensor:
    """``[n_i, d1_i, d2_i, ...]`` -> ``[sum n_i, max d1, max d2, ...]``, zero-padded at the end of
    each dim (Pixtral ``[n, C, H_i, W_i]``: bottom/right; LLaVA-NeXT ``[n, crops_i, C, H, W]``: crops)."""
    sizes = [max(t.shape[d] for t in tensors) for d in range(1, tensors[0].dim())]
    padded = []
    for t in tensors:
        pad = [x for d in reversed(range(1, t.dim())) for x in (0, sizes[d - 1] - t.shape[d])]
        padded.append(nn.functional.pad(t, pad))
    return torch.cat(padded)


class HFVLMAdapter(Adapter):
    """An ``AutoModelForImageTextToText`` model + its processor, under the family ``rule``."""

    supports_images = True

    def __init__(self, model: nn.Module, processor: Any, rule: FamilyRule, chat_template: str | None = None) -> None:
        missing = [p for p in ("image_processor", "tokenizer") if getattr(processor, p, None) is None]
        if missing:
            raise ValueError(f"the {rule.name} processor has no {' or '.join(missing)}; save the full processor "
                             "beside the model (processor.save_pretrained(dir)) or set `tokenizer:`")
        if not isinstance(getattr(model, "model", None), nn.Module):
            raise ValueError(f"{type(model).__name__} has no `.model` body (vision + LM without the head) as the "
                             f"transformers {rule.name} classes have; use a transformers-native checkpoint")
        self.model, self.processor, self.rule, self.name = model, processor, rule, rule.name
        self.tokenizer = processor.tokenizer
        self.chat_template = chat_template or processor.chat_template or self.tokenizer.chat_template
        if not self.chat_template:
            raise ValueError(f"the {rule.name} processor and tokenizer have no chat template; save "
                             "chat_template.jinja beside the model or set `chat_template` in the model config")
        from taid_vlm.adapters.checks import check_vocab

        check_vocab(model.get_output_embeddings().weight.shape[0], len(self.tokenizer))
        self._newline = self.tokenizer("\n", add_special_tokens=False)["input_ids"]

    # -- encoding ---------------------------------------------------------------------------------
    def render(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
        return self.processor.apply_chat_template(messages, chat_template=self.chat_template, tokenize=False,
                                                  add_generation_prompt=add_generation_prompt)

    def _process(self, images: list[Any], text: str, num_images: int) -> dict[str, torch.Tensor]:
        """Processor call on ``text`` with the first ``num_images`` images -> unbatched tensors."""
        strip_newline = False
        if self.rule.prefix_lm:
            # PaliGemma's processor appends "\n" (the prefix/suffix separator) to every text: let it
            # stand for a trailing newline of the template, or drop it, so renderings stay prefixes.
            strip_newline = not text.endswith("\n")
            text = text if strip_newline else text[:-1]
        out = self.processor(text=text, images=images[:num_images] or None, return_tensors="pt")
        enc = {"input_ids": out["input_ids"][0]}
        if strip_newline:
            if enc["input_ids"][-len(self._newline):].tolist() != self._newline:
                raise ValueError(f"the {self.name} processor did not end the text with a newline token")
            enc["input_ids"] = enc["input_ids"][: -len(self._newline)]
        for key, mode in self.rule.keep.items():
            if key in out:
                enc[key] = out[key][0] if mode == "tokens" else out[key]
        return enc

    def _images(self, sample: Sample) -> list[Any]:
        n = count_images(sample.messages)
        if n != len(sample.images):
            raise SkipSample("bad_record", f"{n} image blocks but {len(sample.images)} images")
        if self.rule.needs_image and n == 0:
            raise SkipSample("bad_record", f"the {self.name} family needs an image in every sample")
        return [load_image(ref) for ref in sample.images]

    def encode(self, sample: Sample, max_length: int) -> dict[str, torch.Tensor]:
        """``input_ids/attention_mask/labels [L]`` + the family's image tensors (``rule.keep``)."""
        process = partial(self._process, self._images(sample))
        enc = encode_conversation(sample.messages, render=self.render, process=process, max_length=max_length)
        if self.rule.prefix_lm:
            first = int(torch.nonzero(enc["labels"] != -100)[0])
            enc["token_type_ids"] = (torch.arange(len(enc["input_ids"])) >= first).long()
        for key, mode in self.rule.keep.items():
            if mode == "tokens" and key in enc:
                enc[key] = enc[key][: len(enc["input_ids"])]  # truncation may have cut input_ids
        return enc

    def collate(self, encodings: list[dict[str, torch.Tensor]], side: str = "right") -> dict[str, torch.Tensor]:
        """Pad token tensors to ``[B, L_max]`` (``labels`` with -100) and batch the image tensors."""
        modes = {"input_ids": "tokens", "attention_mask": "tokens", **self.rule.keep}
        if self.rule.prefix_lm:
            modes["token_type_ids"] = "tokens"
        if "labels" in encodings[0]:
            modes["labels"] = "tokens"
        fill = {"input_ids": self.tokenizer.pad_token_id, "labels": -100}
        batch = {}
        for key, mode in modes.items():
            values = [e.get(key) for e in encodings]
            if all(v is None for v in values):
                continue
            if mode == "tokens":
                batch[key] = pad_sequences(values, fill.get(key, 0), side=side)
            elif mode == "cat":
                batch[key] = torch.cat([v for v in values if v is not None])
            elif mode == "cat_pad":
                batch[key] = _cat_padded([v for v in values if v is not None])
            else:
                batch[key] = _pad_images(values)
        return batch

    # -- model ------------------------------------------------------------------------------------
    def model_inputs(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The batch as keyword arguments of the model (the same for the body and the full model)."""
        dev = next(self.model.parameters()).device
        dtype = self.model.dtype
        out = {k: v.to(dev) for k, v in batch.items() if k != "labels"}
        for key in ("pixel_values",):
            if key in out:
                out[key] = out[key].to(dtype)
        if self.rule.prefix_lm and "labels" in batch:
            out["labels"] = batch["labels"].to(dev)  # with token_type_ids: PaliGemma's training mask
        return out

    def response_hidden(self, batch: dict[str, torch.Tensor]) -> ResponseHidden:
        """Body hidden states ``[B, L, H]`` (final norm applied; no ``[B, L, V]`` logits) -> rows ``[N, H]``."""
        out = self.model.model(**self.model_inputs(batch), use_cache=False)
        labels = batch["labels"].to(out.last_hidden_state.device)
        rows, targets, index = gather_response_hidden(out.last_hidden_state, labels)
        head = self.model.get_output_embeddings()
        text_cfg = self.model.config.get_text_config()
        vocab = len(self.tokenizer)
        bias = getattr(head, "bias", None)
        from taid_vlm.models.peft_student import head_weight  # W + scale * B @ A under LoRA on the head

        return ResponseHidden(hidden=rows, weight=head_weight(head)[:vocab], targets=targets, sample_index=index,
                              bias=None if bias is None else bias[:vocab],
                              logit_softcap=getattr(text_cfg, "final_logit_softcapping", None) or None)

    def generate(self, samples: list[Sample], max_new_tokens: int = 32, **gen_kwargs: Any) -> list[str]:
        """Greedy answers for each sample's prompt, batched with left padding."""
        encs = []
        for s in samples:
            process = partial(self._process, self._images(s))
            encs.append(encode_prompt(s.messages, render=self.render, process=process))
        inputs = self.model_inputs(self.collate(encs, side="left"))
        gen_kwargs.setdefault("do_sample", False)
        gen_kwargs.setdefault("suppress_tokens", padded_ids(self.model, len(self.tokenizer)))
        with torch.no_grad():
            out = self.model.generate(**inputs, max_new_tokens=max_new_tokens, pad_token_id=self.tokenizer.pad_token_id,
                                      eos_token_id=self.tokenizer.eos_token_id, **gen_kwargs)
        return self.tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)

    def parts(self) -> dict[str, nn.Module]:
        """``vision`` / ``projector`` / ``lm`` (LM body + head); no parameter is in two parts."""
        return rule_parts(self.model, self.rule)


def rule_parts(model: nn.Module, rule: FamilyRule) -> dict[str, nn.Module]:
    """The ``vision`` / ``projector`` / ``lm`` submodules of a transformers VLM, found through the
    attribute paths of its family ``rule`` (``model.vision_tower``, ``model.multi_modal_projector``,
    ``model.language_model`` + ``lm_head``, ...). Works on meta-device models (the memory plan)."""
    vision = _attr(model, rule.vision)
    if rule.vision_skip:
        vision = nn.ModuleList([m for n, m in vision.named_children() if n != rule.vision_skip])
    projector = _attr(model, rule.projector)
    if rule.projector_params:
        loose = nn.Module()  # holds the very same Parameter objects, so training them trains the model's
        for path in rule.projector_params:
            loose.register_parameter(path.replace(".", "_"), _attr(model, path))
        projector = nn.ModuleList([projector, loose])
    lm = nn.ModuleList([_attr(model, p) for p in rule.lm])
    return {"vision": vision, "projector": projector, "lm": lm}


def _load(path: str, dtype: torch.dtype, trust_remote_code: bool, attn_implementation: str | None) -> nn.Module:
    from transformers import AutoConfig, AutoModelForImageTextToText

    try:
        cfg = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except ValueError as err:
        if "trust_remote_code" in str(err) and not trust_remote_code:
            raise ValueError(f"{path!r} needs the model's own (remote) code; if you trust it, set "
                             "`trust_remote_code: true` in the model config") from err
        raise
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    return AutoModelForImageTextToText.from_pretrained(path, config=cfg, dtype=dtype,
                                                       trust_remote_code=trust_remote_code, **kwargs)


def _load_processor(source: str, trust_remote_code: bool) -> Any:
    import os

    from transformers import AutoProcessor

    if os.path.isdir(source):
        # transformers 5 keeps the image processor in processor_config.json; 4.x in preprocessor_config.json.
        pieces = {"image processor (processor_config.json)": ("processor_config.json", "preprocessor_config.json"),
                  "tokenizer (tokenizer.json / tokenizer_config.json)": ("tokenizer.json", "tokenizer_config.json")}
        missing = [k for k, files in pieces.items() if not any(os.path.isfile(os.path.join(source, f)) for f in files)]
        if missing:
            raise ValueError(f"{source!r} has no {' and no '.join(missing)}; save the processor beside the model "
                             "(processor.save_pretrained(dir)) or set `processor:` to a directory that has it")
    try:
        processor = AutoProcessor.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, TypeError, ImportError) as err:  # ImportError: e.g. SmolVLM needs num2words
        raise ValueError(f"cannot load an image processor + tokenizer from {source!r} ({err}); save the "
                         "processor beside the model (processor.save_pretrained(dir)) or set `processor:`") from err
    if getattr(processor, "image_processor", None) is None:
        raise ValueError(f"{source!r} has a tokenizer but no image processor (processor_config.json); save the "
                         "processor beside the model (processor.save_pretrained(dir)) or set `processor:`")
    return processor


def build_hf_vlm(family: str, path: str | None = None, config: dict | None = None, tokenizer: Any = None,
                 dtype: str = "float32", trust_remote_code: bool = False, chat_template: str | None = None,
                 attn_implementation: str | None = None, processor: Any = None) -> HFVLMAdapter:
    """Build the ``family`` adapter from ``path`` (pretrained model + processor) or ``config``.

    ``config`` is ``{"tiny": variant}`` (a ``models.tiny_hf`` random model; ``tokenizer`` = the
    shared BPE tokenizer) or an HF config dict (``model_type`` + fields, random weights) with
    ``processor`` (a directory or object). ``processor`` also overrides the one beside ``path``;
    ``tokenizer`` (object or directory) replaces the processor's tokenizer.
    """
    from taid_vlm.adapters.text import DTYPES, resolve_tokenizer

    rule = family_rule(family)
    if path:
        model = _load(path, DTYPES[dtype], trust_remote_code, attn_implementation)
        if model.config.model_type not in rule.model_types:
            raise ValueError(f"{path!r} is a {model.config.model_type!r} model, not one of the {family!r} family "
                             f"({', '.join(rule.model_types)}); set `family:` to match or use `family: auto`")
        processor = processor if processor is not None and not isinstance(processor, str) else \
            _load_processor(processor or path, trust_remote_code)
    elif config is not None and "tiny" in config:
        from taid_vlm.models.tiny_hf import tiny_vlm

        model, processor = tiny_vlm(config["tiny"], resolve_tokenizer(tokenizer, None))
        tokenizer = None  # tiny_vlm already put the family copy of the shared tokenizer in place
        model.to(DTYPES[dtype])
    elif config is not None:
        from transformers import AutoConfig, AutoModelForImageTextToText

        if processor is None:
            raise ValueError("an HF VLM built from `config` needs `processor:` (a directory with the processor)")
        cfg = AutoConfig.for_model(**config)
        model = AutoModelForImageTextToText.from_config(cfg, dtype=DTYPES[dtype])
        processor = processor if not isinstance(processor, str) else _load_processor(processor, trust_remote_code)
    else:
        raise ValueError(f"{family} model: set `path` to a pretrained model or `config` to build one")
    if tokenizer is not None:
        processor.tokenizer = resolve_tokenizer(tokenizer, None, trust_remote_code)
    return HFVLMAdapter(model.eval(), processor, rule, chat_template)


for _name, _rule in FAMILIES.items():
    register_adapter(_name, model_types=_rule.model_types)(partial(build_hf_vlm, _name))
