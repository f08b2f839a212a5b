"""Adapters: model families behind one view (response-position hidden states + LM head)."""

from taid_vlm.adapters.base import IGNORE_INDEX, Adapter, ResponseHidden
from taid_vlm.adapters.registry import available_adapters, build_adapter, register_adapter

__all__ = [
    "Adapter",
    "ResponseHidden",
    "IGNORE_INDEX",
    "available_adapters",
    "build_adapter",
    "register_adapter",
]
