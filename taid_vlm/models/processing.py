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

    attributes = ["image_processor", "tokenizer"]
    image_processor_class = "AutoImageProcessor"
    tokenizer_class = "AutoTokenizer"

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

    def __call__(self, text: str | list[str] | None = None, images: list[Any] | None = None,
                 return_tensors: str | None = "pt", **kwargs: Any) -> BatchFeature:
        """Tokenise ``text`` (placeholders expanded; one ``<image>`` per image, in order) and images."""
        data: dict[str, Any] = {}
        if text is not None:
            texts = [text] if isinstance(text, str) else list(text)
            n_slots = sum(t.count(self.image_token) for t in texts)
            if images is not None and n_slots != len(images):
                raise ValueError(f"{n_slots} {self.image_token} placeholders in the text but {len(images)} images")
            enc = self.tokenizer([self.expand_image_tokens(t) for t in texts], return_tensors=return_tensors,
                                 add_special_tokens=False, return_token_type_ids=False, **kwargs)
            data.update(enc)
        if images is not None:
            data["pixel_values"] = self.preprocess_images(list(images))
        return BatchFeature(data=data)
