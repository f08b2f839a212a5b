"""Vision towers by backend name (``hf``, ``timm``, ``open_clip``).

Every tower maps ``pixel_values [B, 3, S, S]`` to patch tokens ``[B, T, C]`` taken at
``spec["feature_layer"]`` with class/prefix tokens dropped, and exposes ``num_tokens`` (T) and
``out_dim`` (C). Layers after the feature layer, final norms and pooling heads are removed at
build time: they would get no gradient, which DDP rejects, and they cost compute.
"""

from __future__ import annotations

import importlib
from typing import Any

from torch import nn

# backend name -> "module:class" beside this file; imported lazily so timm/open_clip load only when
# used. Relative to this package, so the copy saved with a student (``remote_code``) finds them too.
BACKENDS = {
    "hf": "vision_hf:HFVisionTower",
    "timm": "vision_timm:TimmVisionTower",
    "open_clip": "vision_open_clip:OpenClipVisionTower",
}


def _backend_class(name: str) -> type:
    if name not in BACKENDS:
        raise ValueError(f"unknown vision backend {name!r}; valid: {', '.join(sorted(BACKENDS))}")
    module, cls = BACKENDS[name].split(":")
    return getattr(importlib.import_module(f"{__package__}.{module}"), cls)


def build_vision_tower(spec: dict[str, Any]) -> nn.Module:
    """A randomly initialised tower from a fully resolved spec (what ``config.vision`` stores)."""
    return _backend_class(spec["backend"])(spec)


def load_pretrained_tower(spec: dict[str, Any]) -> tuple[nn.Module, dict[str, Any]]:
    """A tower with pretrained weights plus the resolved spec that rebuilds it offline.

    The returned spec has ``pretrained: False`` and everything the backend needs to build the
    same architecture from scratch, so ``from_pretrained`` of a saved student never downloads.
    """
    return _backend_class(spec["backend"]).from_pretrained_spec(spec)


def layer_count_to_keep(num_layers: int, feature_layer: int) -> int:
    """How many blocks to keep so the last kept block is ``feature_layer`` (python-style index
    into the ``num_layers + 1`` hidden states, the first being the embeddings)."""
    k = feature_layer if feature_layer >= 0 else num_layers + 1 + feature_layer
    if not 0 < k <= num_layers:
        raise ValueError(f"vision.feature_layer={feature_layer} is out of range for {num_layers} layers")
    return k
