"""``TaidVLMProcessor``: tokenizer + image preprocessing that expands ``<image>`` placeholders."""

from __future__ import annotations

from typing import Any

import torch
from transformers import BatchFeature, ProcessorMixin


class TaidVLMProcessor(ProcessorMixin):
    """Resizes images to the tower's size and normalises them (a ``SiglipImageProcessor``: resize,
    rescale 1/255, mean/std from the config), and turns each ``<image>`` in the text into
    ``num_image_tokens`` copies of ``<image>``, whose embeddings the model overwrites.

    Saves/loads with ``save_pretrained`` / ``AutoProcessor.from_pretrained`` beside the model.
    """

    # transformers 5 reads the sub-processors (image_processor, tokenizer) from __init__'s signature.

    def __init__(self, image_processor=None, tokenizer=None, num_image_tokens: int = 1,
                 image_token: str = "<image>", chat_template: str | None = None, **kwargs: Any) -> None:
        self.num_image_tokens = int(num_image_tokens)
        self.image_token = image_token
        if chat_template is None and tokenizer is not None:
            chat_template = getattr(tokenizer, "chat_template", None)
        super().__init__(image_processor, tokenizer, chat_template=chat_template)

    @property
    def image_token_id(self) -> int:
        return self.tokenizer.convert_tokens_to_ids(self.image_token)

    def expand_image_tokens(self, text: str) -> str:
        """``"a <image> b" -> "a <image><image>... b"`` (``num_image_tokens`` copies)."""
        return text.replace(self.image_token, self.image_token * self.num_image_tokens)

    def preprocess_images(self, images: list[Any]) -> torch.Tensor:
        """PIL images -> ``[N, 3, S, S]`` float32."""
        if not images:
            size = self.image_processor.size
            return torch.zeros(0, 3, size["height"], size["width"])
        return self.image_processor(images=[im.convert("RGB") for im in images], return_tensors="pt")["pixel_values"]

    def __call__(self, images: Any = None, text: str | list[str] | None = None, videos: Any = None,
                 audio: Any = None, return_tensors: str | None = "pt", **kwargs: Any) -> BatchFeature:
        """Tokenise ``text`` (placeholders expanded; one ``<image>`` per image, in order) and images.

        ``images`` may be flat or nested per text (as ``apply_chat_template`` and the
        ``image-text-to-text`` pipeline pass them); ``videos``/``audio`` are refused.
        """
        if videos is not None or audio is not None:
            raise ValueError("this student reads images and text only (no videos or audio)")
        if isinstance(images, str) or (isinstance(images, list) and images and isinstance(images[0], str)):
            images, text = text, images  # positional (text, images) as the 4.x signature had them
        data: dict[str, Any] = {}
        flat = None if images is None else list(_flatten(images))
        if text is not None:
            texts = [text] if isinstance(text, str) else list(text)
            n_slots = sum(t.count(self.image_token) for t in texts)
            if flat is not None and n_slots != len(flat):
                raise ValueError(f"{n_slots} {self.image_token} placeholders in the text but {len(flat)} images")
            tok_kwargs = {k: kwargs[k] for k in _TOKENIZER_KWARGS if k in kwargs}
            enc = self.tokenizer([self.expand_image_tokens(t) for t in texts], return_tensors=return_tensors,
                                 add_special_tokens=False, return_token_type_ids=False, **tok_kwargs)
            data.update(enc)
        if flat is not None:
            data["pixel_values"] = self.preprocess_images(flat)
        return BatchFeature(data=data)


# Tokenizer options a caller (apply_chat_template, pipelines, lm-eval) may pass through the processor.
_TOKENIZER_KWARGS = ("padding", "truncation", "max_length", "padding_side", "return_attention_mask",
                     "pad_to_multiple_of")


def _flatten(images: Any):
    """Images in order from an image, a list, or a list of per-text lists (``None`` entries skipped)."""
    if images is None:
        return
    if isinstance(images, (list, tuple)):
        for item in images:
            yield from _flatten(item)
    else:
        yield images
