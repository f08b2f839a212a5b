"""Tiny random-weight presets for tests and the demo: a forward on 2 images takes milliseconds.

All presets are plain dicts in the ``factory`` schema; none needs a download.
"""

from __future__ import annotations

import copy
from typing import Any

_TEXT = {
    "qwen2": {
        "model_type": "qwen2", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512,
        "tie_word_embeddings": True,
    },
    "llama": {
        "model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512,
        "tie_word_embeddings": False,
    },
}

_VISION = {
    "hf_siglip": {
        "backend": "hf",
        "config": {"model_type": "siglip_vision_model", "hidden_size": 32, "intermediate_size": 64,
                   "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
    },
    "hf_clip": {
        "backend": "hf",
        "config": {"model_type": "clip_vision_model", "hidden_size": 32, "intermediate_size": 64,
                   "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
        "image_mean": [0.4815, 0.4578, 0.4082], "image_std": [0.2686, 0.2613, 0.2758],
    },
    "timm_vit": {
        "backend": "timm", "name": "vit_tiny_patch16_224",
        "config": {"img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 32, "num_heads": 2},
    },
    "open_clip_vit": {
        "backend": "open_clip", "config": {"layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
    },
}

VISION_PRESETS = tuple(_VISION)
TEXT_PRESETS = tuple(_TEXT)


def tiny_text_config(kind: str = "qwen2", vocab_pad: int = 0, tokenizer_len: int | None = None) -> dict[str, Any]:
    """A 2-layer, 32-wide LM config; ``vocab_pad`` extra head rows beyond ``tokenizer_len``."""
    if kind not in _TEXT:
        raise ValueError(f"unknown tiny text preset {kind!r}; valid: {', '.join(_TEXT)}")
    cfg = copy.deepcopy(_TEXT[kind])
    if vocab_pad:
        if tokenizer_len is None:
            raise ValueError("vocab_pad needs tokenizer_len")
        cfg["vocab_size"] = tokenizer_len + vocab_pad
    return cfg


def tiny_composed_config(vision: str = "hf_siglip", projector: str = "mlp", text: str = "qwen2",
                         feature_layer: int = -1, vocab_pad: int = 0, tokenizer_len: int | None = None,
                         ) -> dict[str, Any]:
    """A composed student: 32 px images, 8 px patches (16 patches), 2-layer tower and LM.

    ``projector="pixel_shuffle_mlp"`` gives 4 image tokens per image instead of 16.
    """
    if vision not in _VISION:
        raise ValueError(f"unknown tiny vision preset {vision!r}; valid: {', '.join(_VISION)}")
    v = {"image_size": 32, "feature_layer": feature_layer, **copy.deepcopy(_VISION[vision])}
    return {
        "vision": v,
        "projector": {"type": projector},
        "text": {"config": tiny_text_config(text, vocab_pad, tokenizer_len)},
    }
