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


# The keys of a vision spec that fix the tower's architecture and input; ``from_model`` copies them.
_ARCH_KEYS = ("backend", "name", "config", "feature_layer", "image_size", "image_mean", "image_std")


def load_tower_of_model(spec: dict[str, Any]) -> tuple[nn.Module, dict[str, Any]]:
    """The vision tower of a saved composed model (``spec["from_model"]``: a folder written by
    ``save_pretrained``, e.g. the teacher's), with its weights, plus the resolved spec.

    The architecture comes from that model's ``config.json``; a key the user spec also sets must
    agree with it. The returned spec has ``from_model: None`` and ``pretrained: False``, so a student
    saved with this tower rebuilds it from its own config and weights, without the source folder.

    Raises:
        FileNotFoundError: the folder has no ``config.json`` or no safetensors weights.
        ValueError: the folder is not a composed model, or a user key disagrees with its tower.
    """
    import json
    from pathlib import Path

    from safetensors import safe_open

    src = Path(spec["from_model"])
    cfg_file = src / "config.json"
    if not cfg_file.is_file():
        raise FileNotFoundError(f"vision.from_model: {src} has no config.json (a saved composed model folder)")
    saved = json.loads(cfg_file.read_text()).get("vision")
    if not isinstance(saved, dict):
        raise ValueError(f"vision.from_model: {src} is not a composed model (its config.json has no `vision`)")
    for key in _ARCH_KEYS:
        if key in spec and spec[key] is not None and spec[key] != saved.get(key):
            raise ValueError(f"vision.{key}={spec[key]!r} differs from the tower of {src} "
                             f"({saved.get(key)!r}); leave it out to take the saved one")
    resolved = {**spec, **{k: saved[k] for k in _ARCH_KEYS if k in saved}, "from_model": None, "pretrained": False}
    tower = build_vision_tower(resolved)
    # A model folder holds one model.safetensors or shards listed in model.safetensors.index.json.
    index = src / "model.safetensors.index.json"
    files = (sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file()
             else ["model.safetensors"])
    prefix, state = "vision_tower.", {}
    for name in files:
        if not (src / name).is_file():
            raise FileNotFoundError(f"vision.from_model: {src / name} is missing")
        with safe_open(str(src / name), framework="pt") as f:
            state.update({k[len(prefix):]: f.get_tensor(k) for k in f.keys() if k.startswith(prefix)})
    tower.load_state_dict(state, strict=True)
    return tower, resolved
