"""YAML <-> typed config, with dotted ``key.sub=value`` overrides. Unknown keys are errors, also
inside the model architecture dicts (``student.config``, ``teacher.config``): a Hugging Face
config (a dict with ``model_type``) is checked against its config class's attributes, and the
composed student's own sections against their defaults, each with the closest valid name."""

from __future__ import annotations

import dataclasses
import difflib
import inspect
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
        optional = len(args) < len(typing.get_args(tp))
        if len(args) == 1:
            return args[0], optional
        return typing.Union[tuple(args)], optional  # e.g. str | list[str] | None: null allowed
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


def _unknown_key(name: str, key: str, valid: Any, what: str = "key") -> ConfigError:
    close = difflib.get_close_matches(str(key), [str(v) for v in valid], n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    shown = sorted(map(str, valid))
    listed = ", ".join(shown) if len(shown) <= 40 else ", ".join(shown[:40]) + ", ..."
    return ConfigError(f"{name}: unknown {what} {key!r}; {hint}valid {what}s here: {listed}")


def _from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    hints = _field_types(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    extra_field = getattr(cls, "__extra_keys_field__", None)
    if extra_field:  # e.g. loss: per-loss option blocks written beside the fields
        extra = {k: data[k] for k in set(data) - names}
        data = {k: v for k, v in data.items() if k in names}
        if extra:
            data[extra_field] = {**(data.get(extra_field) or {}), **extra}
    unknown = sorted(set(data) - names, key=str)
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise _unknown_key(f"{where}{unknown[0]}", unknown[0], names)
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


def _unalias(data: dict[str, Any], keys: list[str], value: Any, loss_name: str) -> list[tuple[list[str], Any]]:
    """A command-line override of a deprecated alias as the override(s) of its new name, with the
    deprecation warning; the recipe's value of the old name is dropped. Written under the new name,
    the override wins over the recipe's value of that name, as every override does; left under the
    old name it would clash with it (``logging.tensorboard``) or lose to it (``loss.kwargs``). (A
    ``taid.*`` override needs nothing: the legacy section already wins over ``loss.taid``.)"""
    new: list[tuple[list[str], Any]]
    if keys == ["logging", "tensorboard"] and isinstance(value, bool):
        new = [(["logging", "report_to"], ["tensorboard"] if value else [])]
    elif keys[:2] == ["loss", "kwargs"] and (len(keys) > 2 or isinstance(value, dict)):
        new = [(["loss", loss_name, *keys[2:]], value)] if len(keys) > 2 else [
            (["loss", loss_name, k], v) for k, v in value.items()]
    else:
        return [(keys, value)]
    node = data
    for k in keys[:-1]:
        node = node.get(k) if isinstance(node, dict) else None
    if isinstance(node, dict):
        node.pop(keys[-1], None)
    shown = " ".join(f"{'.'.join(k)}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}"
                     for k, v in new)
    warnings.warn(f"config: the override {'.'.join(keys)}= uses a deprecated name; applied as {shown}",
                  FutureWarning, stacklevel=4)
    return new


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set dotted keys in a nested dict (in place) and return it. Deprecated aliases
    (``logging.tensorboard``, ``loss.kwargs.*``) are set under their new names."""
    parsed = [parse_override(text) for text in overrides]
    names = [v for k, v in parsed if k == ["loss", "name"]]
    loss_name = names[-1] if names else (data.get("loss") or {}).get("name", "taid")
    for keys, value in (kv for k, v in parsed for kv in _unalias(data, k, v, str(loss_name))):
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
        # The legacy keys win: a `taid.x=...` override on the command line is the newest intent.
        loss["taid"] = {**(loss.get("taid") or {}), **data.pop("taid")}
    if isinstance(loss.get("kwargs"), dict):
        warnings.warn(f"config: `loss.kwargs` is deprecated; write the options as `loss.{name}.<key>`",
                      FutureWarning, stacklevel=3)
        kwargs = loss.pop("kwargs")
        loss[name] = {**kwargs, **(loss.get(name) or {})}
    if loss:
        data["loss"] = loss
    return data


def config_from_dict(data: dict[str, Any]) -> Config:
    """Build and validate a Config from a nested dict (model architecture dicts included)."""
    cfg = _from_dict(Config, _upgrade_legacy(data))
    check_model_dict(cfg.student.config, "student.config", cfg.student.family)
    if cfg.loss.needs_teacher and not cfg.teacher.cache:
        check_model_dict(cfg.teacher.config, "teacher.config", cfg.teacher.family)
    return cfg


def _hf_config_keys(config_cls: type) -> set[str]:
    """Every key a Hugging Face config class understands: its attributes with defaults, their
    aliases (``attribute_map``) and its ``__init__`` parameters. ``PretrainedConfig`` stores any
    other keyword as an attribute without a word, which is how a typo trains a different model."""
    from transformers import PretrainedConfig

    keys = set(config_cls().to_dict()) | set(getattr(config_cls, "attribute_map", {}))
    for klass in (config_cls, PretrainedConfig):
        keys |= {n for n, p in inspect.signature(klass.__init__).parameters.items()
                 if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and n != "self"}
    return keys


def _consumed_by(config_cls: type, key: str, value: Any) -> bool:
    """Whether ``config_cls`` reads ``key`` although it is no attribute of its own: legacy keys that
    its ``__init__`` converts (transformers 5 folds ``rope_theta`` into ``rope_parameters``). An
    unknown key would instead be stored as a plain attribute under its own name."""
    try:
        built = config_cls(**{key: value})
    except Exception:  # noqa: BLE001 - the class looked at the key and refused its value: it knows it
        return True
    return key not in vars(built)


def check_hf_config_dict(data: dict[str, Any], name: str, config_cls: type | None = None) -> None:
    """Raise ``ConfigError`` for a key of ``data`` (an HF config dict) its config class does not
    know, naming the dotted field and the closest valid key; sub-config dicts are checked too."""
    from transformers import CONFIG_MAPPING

    if config_cls is None:
        model_type = data.get("model_type")
        if model_type not in CONFIG_MAPPING:
            raise _unknown_key(f"{name}.model_type", model_type, list(CONFIG_MAPPING.keys()), "model_type")
        config_cls = CONFIG_MAPPING[model_type]
    known = _hf_config_keys(config_cls)
    for key, value in data.items():
        if key not in known and not _consumed_by(config_cls, key, value):
            raise _unknown_key(f"{name}.{key}", key, known)
        if isinstance(value, dict):
            sub = (getattr(config_cls, "sub_configs", None) or {}).get(key)
            if isinstance(value.get("model_type"), str):
                check_hf_config_dict(value, f"{name}.{key}")
            elif isinstance(sub, type) and hasattr(sub, "model_type") and sub.model_type:
                check_hf_config_dict(value, f"{name}.{key}", sub)


def _check_keys(data: Any, name: str, valid: set[str]) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ConfigError(f"{name}: expected a mapping, got {type(data).__name__} {data!r}")
    for key in data:
        if key not in valid:
            raise _unknown_key(f"{name}.{key}", key, valid)
    return data


def check_model_dict(data: dict[str, Any] | None, name: str, family: str) -> None:
    """Check a model architecture dict (``student.config``) for unknown keys at every level:
    the composed student's sections (``vision``, ``projector``, ``text``) against their defaults
    and every Hugging Face config inside (a dict with ``model_type``) against its config class."""
    if not data:
        return
    if family == "composed":
        from taid_vlm.models.configuration import DEFAULT_PROJECTOR, DEFAULT_VISION

        _check_keys(data, name, {"vision", "projector", "text", "image_token"})
        vision = _check_keys(data.get("vision") or {}, f"{name}.vision", {*DEFAULT_VISION, "pretrained", "from_model"})
        _check_keys(data.get("projector") or {}, f"{name}.projector", set(DEFAULT_PROJECTOR))
        text = _check_keys(data.get("text") or {}, f"{name}.text", {"path", "config"})
        if isinstance(text.get("config"), dict):
            check_hf_config_dict(text["config"], f"{name}.text.config")
        # Only an hf tower's config is an HF config; timm/open_clip take their own keyword sets.
        if vision.get("backend", "hf") == "hf" and isinstance(vision.get("config"), dict):
            check_hf_config_dict(vision["config"], f"{name}.vision.config")
    elif "model_type" in data:
        check_hf_config_dict(data, name)


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
