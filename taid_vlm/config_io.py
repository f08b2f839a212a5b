"""YAML <-> typed config, with dotted ``key.sub=value`` overrides. Unknown keys are errors."""

from __future__ import annotations

import dataclasses
import types
import typing
import warnings
from pathlib import Path
from typing import Any

import yaml

from taid_vlm.config import Config, ConfigError


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _coerce(value: Any, tp: Any, name: str) -> Any:
    """Check ``value`` against the annotation ``tp``; ints are accepted for floats."""
    base, optional = _unwrap_optional(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{name}: must not be null")
    if dataclasses.is_dataclass(base):
        if not isinstance(value, dict):
            raise ConfigError(f"{name}: expected a mapping, got {type(value).__name__}")
        return _from_dict(base, value, name)
    origin = typing.get_origin(base) or base
    if origin is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if origin is bool and not isinstance(value, bool):
        raise ConfigError(f"{name}: expected true/false, got {value!r}")
    if origin is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{name}: expected an integer, got {value!r}")
    if origin in (float, str, dict, list) and not isinstance(value, origin):
        raise ConfigError(f"{name}: expected {origin.__name__}, got {type(value).__name__} {value!r}")
    return value


def _from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    hints = _field_types(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    extra_field = getattr(cls, "__extra_keys_field__", None)
    if extra_field:  # e.g. loss: per-loss option blocks written beside the fields
        extra = {k: data[k] for k in set(data) - names}
        data = {k: v for k, v in data.items() if k in names}
        if extra:
            data[extra_field] = {**(data.get(extra_field) or {}), **extra}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(f"{where}{unknown[0]}: unknown key; valid keys here: {', '.join(sorted(names))}")
    kwargs = {k: _coerce(v, hints[k], f"{prefix}.{k}" if prefix else k) for k, v in data.items()}
    return cls(**kwargs)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.lr=3e-4"`` -> (["train", "lr"], 0.0003); the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key.sub=value")
    key, raw = text.split("=", 1)
    value = yaml.safe_load(raw) if raw != "" else None
    # YAML reads 3e-4 as a string (it wants 3.0e-4); numbers written either way should work.
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value for c in ".eE") else value
        except ValueError:
            pass
    return key.strip().split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set dotted keys in a nested dict (in place) and return it."""
    for text in overrides:
        keys, value = parse_override(text)
        node = data
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{'.'.join(keys)}: {k} is not a section")
        node[keys[-1]] = value
    return data


def _upgrade_legacy(data: dict[str, Any]) -> dict[str, Any]:
    """Read the layouts of earlier versions, with a warning that says how to write them now:
    a top-level ``taid:`` section and ``loss.kwargs`` become option blocks inside ``loss:``."""
    data = dict(data)
    loss = dict(data.get("loss") or {})
    name = loss.get("name", "taid")
    if "taid" in data and isinstance(data["taid"], dict):
        warnings.warn("config: the top-level `taid:` section is deprecated; put its keys in `loss:` as "
                      "`loss.taid.<key>` (e.g. loss: {name: taid, taid: {t_start: 0.4}})", FutureWarning,
                      stacklevel=3)
        legacy = data.pop("taid")
        if isinstance(loss.get("taid"), dict):
            legacy = {**legacy, **loss["taid"]}
        loss["taid"] = legacy
    if isinstance(loss.get("kwargs"), dict):
        warnings.warn(f"config: `loss.kwargs` is deprecated; write the options as `loss.{name}.<key>`",
                      FutureWarning, stacklevel=3)
        kwargs = loss.pop("kwargs")
        loss[name] = {**kwargs, **(loss.get(name) or {})}
    if loss:
        data["loss"] = loss
    return data


def config_from_dict(data: dict[str, Any]) -> Config:
    """Build and validate a Config from a nested dict."""
    return _from_dict(Config, _upgrade_legacy(data))


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Read YAML (``yaml.safe_load``), apply overrides, build and check the Config."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} does not exist")
        data = yaml.safe_load(p.read_text()) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: top level must be a mapping")
    apply_overrides(data, list(overrides or []))
    return config_from_dict(data)


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """The fully resolved config as plain data."""
    return dataclasses.asdict(cfg)
