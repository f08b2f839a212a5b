"""The composed TAID-VLM-style student (``taid_vlm.models``) behind the adapter view."""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from torch import nn

from taid_vlm.adapters.base import Adapter, ResponseHidden, gather_response_hidden
from taid_vlm.adapters.registry import register_adapter
from taid_vlm.adapters.text import DTYPES, lm_head_view, pad_left, pad_right, padded_ids, resolve_tokenizer
from taid_vlm.data.template import TokenizerTemplate
from taid_vlm.data.types import Sample, SkipSample

logger = logging.getLogger(__name__)


def load_image(ref: Any):
    """A PIL RGB image from a data-layer ``ImageRef`` (anything with ``.load()``) or a PIL image."""
    from PIL import Image

    # PIL images have a .load() too (it returns pixel access), so test for them first.
    image = ref if isinstance(ref, Image.Image) else ref.load() if hasattr(ref, "load") else ref
    if not isinstance(image, Image.Image):
        raise TypeError(f"expected an ImageRef or a PIL image, got {type(ref).__name__}")
    return image.convert("RGB")


class ComposedTemplate(TokenizerTemplate):
    """The composed student's chat template over block contents (it renders each image block as one
    ``<image>``), with each ``<image>`` expanded to the model's image slots before tokenizing."""

    def __init__(self, processor: Any, chat_template: str | None) -> None:
        super().__init__(processor.tokenizer, chat_template, flatten=False)
        self.processor = processor

    def process(self, text: str, num_images: int = 0) -> dict[str, Any]:
        return super().process(self.processor.expand_image_tokens(text), num_images)


def _count_image_blocks(messages: list[dict]) -> int:
    return sum(
        sum(1 for b in m["content"] if b.get("type") == "image")
        for m in messages if not isinstance(m["content"], str)
    )


class ComposedAdapter(Adapter):
    """``TaidVLMForConditionalGeneration`` + ``TaidVLMProcessor``.

    Each ``{"type": "image"}`` block renders as one ``<image>`` placeholder, which is expanded to
    ``num_image_tokens`` slots; ``pixel_values`` of a batch are the images of all samples in order.
    """

    name = "composed"
    supports_images = True

    def __init__(self, model: nn.Module, processor: Any, chat_template: str | None = None) -> None:
        self.model = model
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.chat_template = chat_template or processor.chat_template or self.tokenizer.chat_template
        if not self.chat_template:
            raise ValueError("the composed student's tokenizer has no chat template; use an instruct/chat "
                             "tokenizer or set `chat_template` in the student config (a Jinja string)")
        self.template = ComposedTemplate(processor, self.chat_template)
        from taid_vlm.adapters.checks import check_vocab

        check_vocab(model.get_output_embeddings().weight.shape[0], len(self.tokenizer))

    def parts(self) -> dict[str, nn.Module]:
        return self.model.parts()

    def save(self, output_dir: str) -> None:
        """Save as a native transformers LLaVA model + ``LlavaProcessor`` when the layout allows
        (hf tower + ``mlp`` projector); else as the taid_vlm classes with their code (``auto_map``)."""
        from taid_vlm.models.export import native_llava_blocker, to_llava
        from taid_vlm.models.remote_code import save_with_code

        reason = native_llava_blocker(self.model)
        if reason is None:
            model, processor = to_llava(self.model, self.processor)
            processor.chat_template = self.chat_template
            model.save_pretrained(output_dir, safe_serialization=True)
            processor.save_pretrained(output_dir)
            return
        logger.warning("saving the student with its modelling code (load with trust_remote_code=True): %s", reason)
        save_with_code(self.model, self.processor, output_dir)

    def _pixels(self, sample: Sample) -> torch.Tensor:
        n_blocks = _count_image_blocks(sample.messages)
        if n_blocks != len(sample.images):
            raise SkipSample("bad_record", f"{n_blocks} image blocks but {len(sample.images)} images")
        images = [load_image(ref) for ref in sample.images]
        if not images:
            return self.processor.preprocess_images([])
        # PIL images are always height x width x 3. Left to guess, the image processor reads a
        # (1, 1, 3) or (3, 1, 3) array (1x1, 1x3 images) as channels-first and fails or scrambles it.
        return self.processor.image_processor(images=images, return_tensors="pt",
                                              input_data_format="channels_last")["pixel_values"]

    def encode(self, sample: Sample, max_length: int) -> dict[str, torch.Tensor]:
        """``input_ids/attention_mask/labels [L]`` + ``pixel_values [n_img, 3, S, S]``."""
        pixels = self._pixels(sample)
        enc = self.template.encode(sample.messages, max_length)
        enc["pixel_values"] = pixels
        return enc

    def collate(self, encodings: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        batch = pad_right(encodings, self.tokenizer.pad_token_id)
        # Images fill the <image> slots in row-major order: sample 0's first, then sample 1's, ...
        batch["pixel_values"] = torch.cat([e["pixel_values"] for e in encodings])
        return batch

    def response_hidden(self, batch: dict[str, torch.Tensor]) -> ResponseHidden:
        """LM-body hidden states ``[B, L, H]`` with images in their slots -> response rows ``[N, H]``."""
        embeds = self.model.embed(batch["input_ids"], batch.get("pixel_values"))
        out = self.model.get_decoder()(inputs_embeds=embeds, attention_mask=batch["attention_mask"], use_cache=False)
        rows, targets, index = gather_response_hidden(out[0], batch["labels"])
        return ResponseHidden(hidden=rows, targets=targets, sample_index=index,
                              **lm_head_view(self.model.language_model, len(self.tokenizer)))

    def generate(self, samples: list[Sample], max_new_tokens: int = 32, **gen_kwargs: Any) -> list[str]:
        seqs, pixels = [], []
        for s in samples:
            pixels.append(self._pixels(s))
            seqs.append(self.template.encode_prompt(s.messages)["input_ids"])
        ids, att = pad_left(seqs, self.tokenizer.pad_token_id)
        dev = next(self.model.parameters()).device
        pix = torch.cat(pixels).to(dev)
        gen_kwargs.setdefault("do_sample", False)
        gen_kwargs.setdefault("suppress_tokens", padded_ids(self.model, len(self.tokenizer)))
        with torch.no_grad():
            out = self.model.generate(input_ids=ids.to(dev), attention_mask=att.to(dev),
                                      pixel_values=pix if len(pix) else None, max_new_tokens=max_new_tokens,
                                      pad_token_id=self.tokenizer.pad_token_id,
                                      eos_token_id=self.tokenizer.eos_token_id, **gen_kwargs)
        return self.tokenizer.batch_decode(out[:, ids.shape[1]:], skip_special_tokens=True)


def _load_processor(path: str, tokenizer: Any) -> Any:
    from taid_vlm.models import TaidVLMProcessor

    # transformers 5 writes the image processor into processor_config.json, 4.x into preprocessor_config.json.
    if not any(os.path.isfile(os.path.join(path, f)) for f in ("processor_config.json", "preprocessor_config.json")):
        raise ValueError(f"{path!r} has no processor (processor_config.json); save the student with "
                         "adapter.save(dir) or processor.save_pretrained(dir) beside the model")
    processor = TaidVLMProcessor.from_pretrained(path)
    if tokenizer is not None:
        processor.tokenizer = resolve_tokenizer(tokenizer, None)
    return processor


def _model_type(path: str) -> str | None:
    import json

    cfg = os.path.join(path, "config.json")
    return json.loads(open(cfg).read()).get("model_type") if os.path.isfile(cfg) else None


def _warn_if_not_native(model: nn.Module) -> None:
    # Said before training, so a user who needs a plain-transformers student can change the layout now.
    from taid_vlm.models.export import native_llava_blocker

    reason = native_llava_blocker(model)
    if reason:
        logger.warning("this student will be saved with its own modelling code (auto_map; loading it needs "
                       "trust_remote_code=True), not as a native transformers LLaVA model: %s", reason)


@register_adapter("composed", model_types=("taid_vlm",))
def build_composed_adapter(path: str | None = None, config: dict | None = None, tokenizer: Any = None,
                           dtype: str = "float32", trust_remote_code: bool = False,
                           chat_template: str | None = None, attn_implementation: str | None = None
                           ) -> ComposedAdapter:
    """``path`` (a saved composed student) or ``config`` (the ``models.factory`` dict, random weights)."""
    from taid_vlm.models import TaidVLMForConditionalGeneration
    from taid_vlm.models.factory import build_composed

    del trust_remote_code  # the composed model's code is this package; nothing remote is run
    kwargs: dict[str, Any] = {"attn_implementation": attn_implementation} if attn_implementation else {}
    if path and _model_type(path) == "llava":
        # A student saved natively (see ComposedAdapter.save), back in the composed classes to train on.
        from transformers import AutoProcessor, LlavaForConditionalGeneration

        from taid_vlm.models.export import from_llava

        llava = LlavaForConditionalGeneration.from_pretrained(path, dtype=DTYPES[dtype], **kwargs)
        model, processor = from_llava(llava, AutoProcessor.from_pretrained(path))
        if tokenizer is not None:
            processor.tokenizer = resolve_tokenizer(tokenizer, None)
    elif path:
        model = TaidVLMForConditionalGeneration.from_pretrained(path, dtype=DTYPES[dtype], **kwargs)
        processor = _load_processor(path, tokenizer)
    elif config is not None:
        model, processor = build_composed(config, resolve_tokenizer(tokenizer, None), **kwargs)
        model.to(DTYPES[dtype])
        _warn_if_not_native(model)
    else:
        raise ValueError("composed model: set `path` to a saved student or `config` to build one")
    return ComposedAdapter(model, processor, chat_template)
