"""timm vision towers: any model name with ``forward_intermediates`` (ViT, ConvNeXt, ...)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class TimmVisionTower(nn.Module):
    """``[B, 3, S, S] -> [B, (S / reduction)^2, C]`` from the feature layer's spatial map.

    ``spec["config"]`` holds extra ``timm.create_model`` kwargs (e.g. ``img_size``, ``depth``).
    """

    def __init__(self, spec: dict[str, Any], pretrained: bool = False) -> None:
        super().__init__()
        import timm

        if not spec.get("name"):
            raise ValueError("vision.name: the timm backend needs a timm model name, e.g. vit_tiny_patch16_224")
        kwargs = dict(spec.get("config") or {})
        kwargs.setdefault("num_classes", 0)
        self.model = timm.create_model(spec["name"], pretrained=pretrained, **kwargs)
        layer = int(spec.get("feature_layer", -1))
        info = self.model.feature_info[layer]
        # Pruning drops later blocks, the final norm and the head: they would get no gradient.
        self.indices = self.model.prune_intermediate_layers([layer], prune_norm=True, prune_head=True)
        side = int(spec["image_size"]) // info["reduction"]
        self.num_tokens = side * side
        self.out_dim = info["num_chs"]

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        (fmap,) = self.model.forward_intermediates(pixel_values, indices=self.indices, intermediates_only=True)
        # NCHW (prefix tokens already removed by timm) -> [B, H*W, C]
        return fmap.flatten(2).transpose(1, 2)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.model.set_grad_checkpointing(enable)

    @classmethod
    def from_pretrained_spec(cls, spec: dict[str, Any]) -> tuple[TimmVisionTower, dict[str, Any]]:
        resolved = {**spec, "pretrained": False}
        return cls(resolved, pretrained=True), resolved
