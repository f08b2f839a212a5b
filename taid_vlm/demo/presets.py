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


PRESETS: dict[str, dict[str, Any]] = {
    # About 12-15 minutes on 2 CPU cores, all stages (student ~4x smaller than the teacher).
    "default": {
        "data": {"n_train": 2000, "n_val": 200, "image_size": 32},
        "tokenizer_vocab": 512,
        "teacher": _composed(96, 2, 128, 2, 32, 8, "mlp"),
        "student": _composed(48, 1, 64, 2, 32, 8, "mlp"),
        "teacher_train": {"max_steps": 2000, "batch_size": 32, "lr": 1e-3, "warmup_steps": 50},
        "student_train": {"max_steps": 800, "batch_size": 32, "lr": 2e-3, "warmup_steps": 30},
        "eval": {"limit": 200, "max_new_tokens": 8, "batch_size": 50},
    },
    # A few minutes in CI: same pipeline, smaller everything; the teacher still learns the task.
    "tiny": {
        "data": {"n_train": 1000, "n_val": 100, "image_size": 32},
        "tokenizer_vocab": 384,
        "teacher": _composed(96, 2, 128, 2, 32, 8, "mlp"),
        "student": _composed(32, 1, 48, 1, 32, 8, "mlp"),
        "teacher_train": {"max_steps": 600, "batch_size": 32, "lr": 1e-3, "warmup_steps": 30},
        "student_train": {"max_steps": 100, "batch_size": 32, "lr": 2e-3, "warmup_steps": 10},
        "eval": {"limit": 100, "max_new_tokens": 8, "batch_size": 50},
    },
}

METHODS = {"taid": "TAID", "fkl": "Forward KL", "sft": "SFT (no teacher)"}
