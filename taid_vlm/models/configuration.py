"""``TaidVLMConfig``: the composed student's config (vision tower spec + projector spec + LM config).

The vision and projector specs are plain dicts so that every backend's own settings (an HF
vision config dict, timm ``create_model`` kwargs, an open_clip ``vision_cfg``) are stored verbatim
in ``config.json`` and ``from_pretrained`` can rebuild the tower without any download.
"""

from __future__ import annotations

import copy
from typing import Any

from transformers import AutoConfig, PretrainedConfig
from transformers.models.auto import CONFIG_MAPPING

DEFAULT_VISION: dict[str, Any] = {
    "backend": "hf",  # hf | timm | open_clip (see taid_vlm.models.vision)
    "name": None,  # timm / open_clip model name; unused for hf
    "config": None,  # hf: vision config dict; timm: create_model kwargs; open_clip: vision_cfg overrides
    "feature_layer": -1,  # which block's output feeds the projector (-2 as LLaVA-1.5)
    "image_size": 224,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
}
DEFAULT_PROJECTOR: dict[str, Any] = {"type": "mlp", "hidden_size": None}


class TaidVLMConfig(PretrainedConfig):
    """Config of ``TaidVLMForConditionalGeneration``.

    Args:
        vision: vision tower spec, keys as ``DEFAULT_VISION`` (missing keys take those defaults).
        projector: ``{"type": "mlp" | "pixel_shuffle_mlp", "hidden_size": int | None}``
            (``hidden_size`` None = the LM's hidden size).
        text_config: the causal LM's config (a ``PretrainedConfig`` or a dict with ``model_type``).
        image_token_id: id of ``<image>`` in the tokenizer; its slots receive image embeddings.
        num_image_tokens: tokens per image after the projector; filled in by the model itself.
    """

    model_type = "taid_vlm"
    sub_configs = {"text_config": AutoConfig}

    def __init__(
        self,
        vision: dict[str, Any] | None = None,
        projector: dict[str, Any] | None = None,
        text_config: PretrainedConfig | dict[str, Any] | None = None,
        image_token_id: int | None = None,
        image_token: str = "<image>",
        num_image_tokens: int | None = None,
        **kwargs: Any,
    ) -> None:
        self.vision = {**DEFAULT_VISION, **copy.deepcopy(vision or {})}
        self.projector = {**DEFAULT_PROJECTOR, **copy.deepcopy(projector or {})}
        if isinstance(text_config, dict):
            text_config = dict(text_config)
            model_type = text_config.pop("model_type", "qwen2")
            text_config = CONFIG_MAPPING[model_type](**text_config)
        self.text_config = text_config if text_config is not None else CONFIG_MAPPING["qwen2"]()
        self.image_token_id = image_token_id
        self.image_token = image_token
        self.num_image_tokens = num_image_tokens
        # Tying follows the LM: the top-level flag must not silently tie an untied checkpoint.
        kwargs.setdefault("tie_word_embeddings", getattr(self.text_config, "tie_word_embeddings", False))
        super().__init__(**kwargs)

    @property
    def hidden_size(self) -> int:
        """The LM's hidden size (what image embeddings are projected to)."""
        return self.text_config.hidden_size
