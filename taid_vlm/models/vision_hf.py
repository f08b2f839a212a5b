"""Hugging Face vision towers: SigLIP, CLIP or the vision part of any ``AutoModel`` config."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig

from taid_vlm.models.vision import layer_count_to_keep


def _vision_config(cfg: dict[str, Any] | PretrainedConfig) -> PretrainedConfig:
    """The vision config from a dict or config; composite configs (CLIP, SigLIP) give their vision part."""
    if isinstance(cfg, dict):
        cfg = copy.deepcopy(cfg)
        cfg = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    return getattr(cfg, "vision_config", None) or cfg


class HFVisionTower(nn.Module):
    """``[B, 3, S, S] -> [B, (S / patch)^2, C]`` from ``hidden_states[feature_layer]``."""

    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__()
        if not spec.get("config"):
            raise ValueError("vision.config: the hf backend needs a vision config dict (or a pretrained `name`)")
        cfg = _vision_config(spec["config"])
        if int(spec.get("image_size", cfg.image_size)) != cfg.image_size:
            raise ValueError(f"vision.image_size={spec['image_size']} but the hf vision config has image_size="
                             f"{cfg.image_size}; set them equal (the tower's position embeddings fix it)")
        self.model = AutoModel.from_config(cfg)
        self.num_tokens = (cfg.image_size // cfg.patch_size) ** 2
        self.out_dim = cfg.hidden_size
        self._prune(cfg.num_hidden_layers, int(spec.get("feature_layer", -1)))

    def _prune(self, num_layers: int, feature_layer: int) -> None:
        inner = getattr(self.model, "vision_model", self.model)
        keep = layer_count_to_keep(num_layers, feature_layer)
        encoder = getattr(inner, "encoder", None)
        if encoder is not None and hasattr(encoder, "layers"):
            encoder.layers = encoder.layers[:keep]
        # The pooled output is never used; drop its norm/head so every parameter gets a gradient.
        for name in ("post_layernorm", "head"):
            if isinstance(getattr(inner, name, None), nn.Module):
                setattr(inner, name, nn.Identity())

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out = self.model(pixel_values=pixel_values, output_hidden_states=True)
        # Patch tokens are the trailing ones: CLIP's class token comes first, SigLIP has none.
        return out.hidden_states[-1][:, -self.num_tokens:]

    @classmethod
    def from_pretrained_spec(cls, spec: dict[str, Any]) -> tuple[HFVisionTower, dict[str, Any]]:
        path = spec.get("name")
        if not path:
            raise ValueError("vision.name: set the pretrained model path (or use `config` with pretrained: false)")
        full = AutoModel.from_pretrained(path)
        cfg = _vision_config(full.config)
        resolved = {**spec, "config": cfg.to_dict(), "pretrained": False, "image_size": cfg.image_size}
        tower = cls(resolved)
        state = full.state_dict()
        if full.config is not cfg:
            # A composite model (CLIPModel, SiglipModel): its vision part sits under "vision_model.";
            # transformers 5's stand-alone vision models have no such prefix.
            state = {k.removeprefix("vision_model."): v for k, v in state.items() if k.startswith("vision_model.")}
        missing, _ = tower.model.load_state_dict(state, strict=False)
        if missing:
            raise ValueError(f"pretrained vision weights at {path!r} miss {missing[:5]}")
        return tower, resolved
