"""What to say when a path named by the user does not exist: where a relative path was looked for,
and, for the README tour's paths, the command that makes them."""

from __future__ import annotations

import os
from pathlib import Path

# The tour's generated paths (README "Tour") and the command that writes each one.
TOUR_MAKERS = {
    "data/shapes": "taid-vlm make-synthetic --output data/shapes",
    "data/lee": "python eval/pretrain_study.py --quick",
    "runs/pretrain_study": "python eval/pretrain_study.py --quick",
    "runs/tiny_teacher": "taid-vlm train configs/tiny_vlm_teacher.yaml",
    "runs/tiny_text_teacher": "taid-vlm train configs/tiny_text_teacher.yaml",
    "runs/tiny_taid": "taid-vlm train configs/tiny_vlm_taid.yaml",
    "runs/tiny_text_taid": "taid-vlm train configs/tiny_text_taid.yaml",
}


def where_looked(value: str | os.PathLike) -> str:
    """`` (looked for in /abs/dir)`` for a relative path, ``""`` for an absolute one."""
    return "" if Path(value).is_absolute() else f" (a relative path: looked for in {os.getcwd()})"


def tour_hint(value: str | os.PathLike) -> str:
    """``; the README tour makes it with: CMD`` when ``value`` lies under one of the tour's paths."""
    parts = Path(value).parts
    for prefix, cmd in TOUR_MAKERS.items():
        if parts[:len(Path(prefix).parts)] == Path(prefix).parts:
            return f"; the README tour makes it with: {cmd}"
    return ""


def missing(value: str | os.PathLike, what: str = "does not exist") -> str:
    """``'data/shapes/train.json' does not exist (a relative path: looked for in /cwd); the README
    tour makes it with: taid-vlm make-synthetic --output data/shapes``."""
    return f"{str(value)!r} {what}{where_looked(value)}{tour_hint(value)}"


def looks_like_hub_model(value: str) -> bool:
    """``owner/name`` or ``name``, as the hub spells repository ids (no ``./``, no deeper folders)."""
    import re

    return bool(re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?", value)) and ".." not in value


def check_model_source(value: str, field: str) -> None:
    """Raise ``FileNotFoundError`` ("no such model folder") for a model that can come from nowhere:
    not a folder here, and not a hub id, or a hub id the offline hub cache does not hold. Without
    this, transformers answers a missing ``runs/x/final`` with a hub repo-id format error."""
    if Path(value).exists():
        return
    hub_id = looks_like_hub_model(value)
    if hub_id:
        from huggingface_hub import constants, try_to_load_from_cache

        offline = constants.is_offline_mode() if callable(getattr(constants, "is_offline_mode", None)) \
            else constants.HF_HUB_OFFLINE
        if not offline or isinstance(try_to_load_from_cache(value, "config.json"), str):
            return  # the hub (or its cache) may have it: the loader decides
    why = "; as a hub id it is not in the local cache and the hub is offline (HF_HUB_OFFLINE)" if hub_id else ""
    raise FileNotFoundError(f"{field}: no such model folder: {missing(value, 'does not exist')}{why}")
