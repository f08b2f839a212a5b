"""Adapter registry: model families by name, never by substrings of model names."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from taid_vlm.adapters.base import Adapter

_BUILDERS: dict[str, Callable[..., Adapter]] = {}
# HF ``config.model_type`` -> family name, for ``family: auto``.
_MODEL_TYPES: dict[str, str] = {}


def register_adapter(name: str, model_types: tuple[str, ...] = ()) -> Callable:
    """Decorator: register a builder ``fn(**spec) -> Adapter`` under ``name``.

    ``model_types`` are the HF ``config.model_type`` values that ``family="auto"`` maps here.
    """

    def deco(fn: Callable[..., Adapter]) -> Callable[..., Adapter]:
        if name in _BUILDERS:
            raise ValueError(f"adapter family {name!r} registered twice")
        _BUILDERS[name] = fn
        for mt in model_types:
            _MODEL_TYPES[mt] = name
        return fn

    return deco


def _closest(name: str, known: Any) -> str:
    """`` (closest known: 'x')`` by string similarity, or ``""`` when nothing is close."""
    import difflib

    match = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f" (closest known: {match[0]!r})" if match else ""


def available_adapters() -> list[str]:
    """Registered family names, sorted."""
    _import_builtin()
    return sorted(_BUILDERS)


def family_for_model_type(model_type: str) -> str:
    """The family registered for an HF ``model_type``; ValueError listing known types otherwise."""
    _import_builtin()
    if model_type not in _MODEL_TYPES:
        raise ValueError(
            f"no adapter for model_type {model_type!r}{_closest(model_type, _MODEL_TYPES)}; known model types: "
            f"{sorted(_MODEL_TYPES)}. Set `family:` explicitly to one of " + ", ".join(sorted(_BUILDERS))
        )
    return _MODEL_TYPES[model_type]


def get_builder(family: str) -> Callable[..., Adapter]:
    """The builder registered as ``family``; ValueError listing valid names otherwise."""
    _import_builtin()
    if family not in _BUILDERS:
        raise ValueError(f"unknown adapter family {family!r}{_closest(family, _BUILDERS)}; "
                         f"valid: {', '.join(sorted(_BUILDERS))}")
    return _BUILDERS[family]


def _import_builtin() -> None:
    # Importing the family modules runs their @register_adapter decorators.
    import importlib

    for mod in ("text", "composed", "hf_vlm"):
        try:
            importlib.import_module(f"taid_vlm.adapters.{mod}")
        except ModuleNotFoundError as err:
            if err.name != f"taid_vlm.adapters.{mod}":
                raise


def build_adapter(family: str = "auto", **spec: Any) -> Adapter:
    """Build an adapter. ``family='auto'`` reads ``model_type`` from ``spec['path']``'s config.

    ``spec`` keys (all optional except as a family needs them): ``path`` (pretrained dir),
    ``config`` (dict for random init), ``tokenizer`` (a tokenizer object or path),
    ``dtype`` ("float32" | "bfloat16" | "float16"), ``trust_remote_code`` (bool, default False),
    ``chat_template`` (str), ``attn_implementation`` (str).
    """
    if family == "auto":
        if not spec.get("path"):
            raise ValueError("family 'auto' needs `path` to a pretrained model directory")
        from transformers import AutoConfig

        cfg = AutoConfig.from_pretrained(spec["path"], trust_remote_code=bool(spec.get("trust_remote_code")))
        family = family_for_model_type(cfg.model_type)
    return get_builder(family)(**spec)
