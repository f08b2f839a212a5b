"""open_clip vision towers: a named config (shipped with open_clip, no download) or a custom one."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def _vision_cfg(spec: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    import open_clip

    cfg: dict[str, Any] = {}
    embed_dim = 512
    if spec.get("name"):
        named = open_clip.get_model_config(spec["name"])
        if named is None:
            raise ValueError(f"vision.name: open_clip has no model config {spec['name']!r}; see open_clip.list_models()")
        cfg, embed_dim = dict(named["vision_cfg"]), named["embed_dim"]
    cfg.update(spec.get("config") or {})
    embed_dim = cfg.pop("embed_dim", embed_dim)
    cfg["image_size"] = int(spec["image_size"])
    return embed_dim, cfg


class OpenClipVisionTower(nn.Module):
    """``[B, 3, S, S] -> [B, (S / patch)^2, width]`` from an open_clip ``VisionTransformer``.

    ``spec["config"]`` overrides open_clip ``vision_cfg`` keys (``layers``, ``width``,
    ``patch_size``, ``head_width``...); with no ``name`` it is the whole vision config.
    """

    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__()
        # open_clip exposes no public "vision tower from a config" call; _build_vision_tower is what
        # its own create_model uses for the visual part.
        from open_clip.model import _build_vision_tower

        embed_dim, cfg = _vision_cfg(spec)
        self.model = _build_vision_tower(embed_dim, {**cfg, "output_tokens": True})
        if not hasattr(self.model, "forward_intermediates") or not hasattr(self.model, "patch_size"):
            raise ValueError("vision: only open_clip ViT towers give patch tokens; use the timm backend for others")
        layer = int(spec.get("feature_layer", -1))
        self.indices = self.model.prune_intermediate_layers([layer], prune_norm=True, prune_head=True)
        side = cfg["image_size"] // self.model.patch_size[0]
        self.num_tokens = side * side
        self.out_dim = self.model.transformer.width

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out = self.model.forward_intermediates(pixel_values, indices=self.indices, intermediates_only=True,
                                               output_fmt="NLC")
        return out["image_intermediates"][0]  # class token already split off

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.model.set_grad_checkpointing(enable)

    @classmethod
    def from_pretrained_spec(cls, spec: dict[str, Any]) -> tuple[OpenClipVisionTower, dict[str, Any]]:
        import open_clip

        tag = spec.get("pretrained")
        if not isinstance(tag, str):
            raise ValueError(f"vision.pretrained: give the open_clip weights tag as a string, one of "
                             f"{open_clip.list_pretrained_tags_by_model(spec['name'])}")
        full = open_clip.create_model(spec["name"], pretrained=tag)
        resolved = {**spec, "pretrained": False}
        tower = cls(resolved)
        missing, _ = tower.model.load_state_dict(full.visual.state_dict(), strict=False)
        if missing:
            raise ValueError(f"open_clip {spec['name']!r}: pretrained weights miss {missing[:5]}")
        return tower, resolved
