"""Model and run sizes of ``taid-vlm demo``: a composed teacher several times the student's size."""

from __future__ import annotations

from typing import Any


def _composed(vision_width: int, vision_layers: int, lm_width: int, lm_layers: int, image_size: int,
              patch: int, projector: str) -> dict[str, Any]:
    heads = max(2, vision_width // 32)
    return {
        "vision": {
            "backend": "hf",
            "config": {
                "model_type": "siglip_vision_model", "hidden_size": vision_width,
                "intermediate_size": vision_width * 4, "num_hidden_layers": vision_layers,
                "num_attention_heads": heads, "image_size": image_size, "patch_size": patch,
            },
            "feature_layer": -1,
            "image_size": image_size,
        },
        "projector": {"type": projector},
        "text": {
            "config": {
                "model_type": "qwen2", "hidden_size": lm_width, "intermediate_size": lm_width * 3,
                "num_hidden_layers": lm_layers, "num_attention_heads": max(2, lm_width // 32),
                "num_key_value_heads": max(1, lm_width // 64), "max_position_embeddings": 512,
                "tie_word_embeddings": True,
            }
        },
    }


def _conv(channels: int, blocks: int, lm_width: int, lm_layers: int, image_size: int, projector: str = "mlp",
          feature_layer: int = 2) -> dict[str, Any]:
    """A composed model whose vision tower is a small ResNet (timm ``resnet10t`` built from config,
    random weights), cut after ``feature_layer`` (2: stride 8, so (image_size / 8)^2 image tokens).

    A convolution's locality and weight sharing let a tower trained from scratch learn shapes and
    colours in a few hundred steps, where a ViT of the same size with 8-px patches does not.
    """
    spec = _composed(32, 1, lm_width, lm_layers, image_size, 8, projector)
    spec["vision"] = {
        "backend": "timm", "name": "resnet10t",
        "config": {"layers": [blocks] * 4, "channels": [channels * 2 ** i for i in range(4)],
                   "stem_width": channels},
        "feature_layer": feature_layer,
        "image_size": image_size,
    }
    return spec


PRESETS: dict[str, dict[str, Any]] = {
    # Students that see (conv towers), a teacher that has seen 4x the students' images, and
    # 1,000 held-out questions/conversations so the bootstrap intervals resolve a few points.
    # About 15 minutes on 2 quiet CPU cores, all stages (see the README for the measured time).
    "default": {
        "data": {"n_train": 8000, "n_student": 2000, "n_val": 1000, "image_size": 32},
        "tokenizer_vocab": 512,
        "teacher": _conv(32, 1, 128, 2, 32),
        "student": _conv(16, 1, 64, 2, 32),
        "teacher_train": {"max_steps": 600, "batch_size": 32, "lr": 2e-3, "warmup_steps": 30},
        "student_train": {"max_steps": 300, "batch_size": 32, "lr": 2e-3, "warmup_steps": 20},
        "eval": {"limit": 1000, "caption_limit": 300, "max_new_tokens": 8, "batch_size": 100},
    },
    # A few minutes in CI: same pipeline, smaller everything; the teacher still learns the task.
    "tiny": {
        "data": {"n_train": 2000, "n_student": 500, "n_val": 300, "image_size": 32},
        "tokenizer_vocab": 384,
        "teacher": _conv(32, 1, 128, 2, 32),
        "student": _conv(16, 1, 48, 1, 32),
        "teacher_train": {"max_steps": 400, "batch_size": 32, "lr": 2e-3, "warmup_steps": 30},
        "student_train": {"max_steps": 100, "batch_size": 32, "lr": 2e-3, "warmup_steps": 10},
        "eval": {"limit": 300, "caption_limit": 100, "max_new_tokens": 8, "batch_size": 100},
    },
}

METHODS = {"taid": "TAID", "fkl": "Forward KL", "sft": "SFT (no teacher)"}
