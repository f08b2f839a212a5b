"""Reuse keys: what decides a finished run's result (or a teacher cache's contents), as data.

A key is the resolved config with every string that names an existing file or folder replaced by
a hash of that file's or folder's content (weights, tokenizer, data, a teacher cache), so that

- a teacher rebuilt in place, or a data file regenerated at the same path, changes the key, and
  the runs made from the old one are not taken for runs of the new one;
- the same inputs reached by another path (a relative ``--output``, a moved work folder) give the
  same key;
- a config field added by a newer version of the package changes nothing while it holds its
  default: fields only one side knows are compared to their default (see ``key_changes``).

The demo, the eval/ studies and the teacher cache all decide reuse here (``reuse_verdict``); the
key is written into the run folder (``KEY_FILE``). Hub model ids and the files a data file names
(its images) are compared by name, not content: only paths in the config itself are hashed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import typing
from pathlib import Path
from typing import Any

KEY_FILE = "reuse_key.json"
CONTENT = "content:"
# Fields that do not decide the result: where it is written, scratch folders, logging.
NOT_INPUTS = ("train.output_dir", "data.cache_dir", "teacher.offload_folder", "logging")

_HASHES: dict[tuple[str, tuple], str] = {}  # (path, size/mtime signature) -> hash, for this process


def _files(p: Path) -> list[Path]:
    # A folder's own reuse key describes where its inputs were, not what it holds (it names paths).
    return [p] if p.is_file() else sorted(q for q in p.rglob("*") if q.is_file() and q.name != KEY_FILE)


def hash_path(path: str | Path) -> str:
    """Content hash of a file (its name and bytes), or of every file (relative name, bytes) under a
    folder. Kept per process by (path, size, mtime) of each file: a file rewritten in place is
    hashed again, an unchanged one is read once."""
    p = Path(path).resolve()
    files = _files(p)
    sig = tuple((str(f), (st := f.stat()).st_size, st.st_mtime_ns) for f in files)
    if (str(p), sig) in _HASHES:
        return _HASHES[(str(p), sig)]
    h = hashlib.sha256()
    for f in files:
        h.update(str(f.relative_to(p) if p.is_dir() else f.name).encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    _HASHES[(str(p), sig)] = digest = h.hexdigest()[:16]
    return digest


def _names_path(value: Any) -> bool:
    if not isinstance(value, str) or not value or "\n" in value or len(value) > 4096:
        return False
    try:
        return os.path.exists(value)
    except (OSError, ValueError):
        return False


def _normalise(value: Any, where: str, files: dict[str, dict[str, str]]) -> Any:
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            child = f"{where}.{k}" if where else str(k)
            if not any(child == n or child.startswith(n + ".") for n in NOT_INPUTS):
                out[k] = _normalise(v, child, files)
        return out
    if isinstance(value, (list, tuple)):
        return [_normalise(v, f"{where}[{i}]", files) for i, v in enumerate(value)]
    if _names_path(value):
        digest = hash_path(value)
        files[where] = {"path": str(Path(value).resolve()), "hash": digest}
        return CONTENT + digest
    return value


def reuse_key(cfg: dict[str, Any], sections: tuple[str, ...] | None = None,
              extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The reuse key of a resolved config dict (``config_to_dict``).

    Args:
        cfg: the resolved config as plain data.
        sections: dotted fields to keep (e.g. ``("teacher", "data", "student.tokenizer")`` for a
            teacher cache); default all.
        extra: settings outside the config that decide the result too (e.g. the cache's top-k).

    Returns:
        ``{"config": ..., "files": {field: {"path", "hash"}}}``: ``config`` with ``NOT_INPUTS``
        left out and path strings replaced by ``"content:<hash>"`` (plus ``extra`` under
        ``"extra"``); ``files`` says which path each hash was taken from, for messages.
    """
    if sections is not None:
        picked: dict[str, Any] = {}
        for dotted in sections:
            src, dst, keys = cfg, picked, dotted.split(".")
            for k in keys[:-1]:
                src, dst = src.get(k) or {}, dst.setdefault(k, {})
            if keys[-1] in src:
                dst[keys[-1]] = src[keys[-1]]
        cfg = picked
    files: dict[str, dict[str, str]] = {}
    config = _normalise(json.loads(json.dumps(cfg, default=str)), "", files)
    if extra:
        config["extra"] = json.loads(json.dumps(extra, default=str))
    return {"config": config, "files": files}


_NO_DEFAULT = object()


def _field_default(keys: list[str]) -> Any:
    """The dataclass default of the config field at ``keys`` (``_NO_DEFAULT`` if none is known)."""
    from taid_vlm.config import Config

    cls: Any = Config
    for i, k in enumerate(keys):
        fields = {f.name: f for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else {}
        if k not in fields:
            return _NO_DEFAULT
        f = fields[k]
        if i < len(keys) - 1:
            tp = typing.get_type_hints(cls)[k]
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            cls = args[0] if len(args) == 1 else tp
            continue
        if f.default is not dataclasses.MISSING:
            return f.default
        if f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
            return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
    return _NO_DEFAULT


def key_changes(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """What differs between two keys, one line per field: ``"train.max_steps: 4 -> 6"``, or
    ``"teacher.path: the content of /x/M changed"``. A field only the current key has counts when
    it differs from its default (a new option at its default leaves the result as it was); a field
    only the stored key has (one since removed) does not count."""
    files = {**stored.get("files", {}), **{k: v for k, v in current.get("files", {}).items()
                                          if k not in stored.get("files", {})}}
    out: list[str] = []

    def walk(a: Any, b: Any, keys: list[str]) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for k in b:
                if k in a:
                    walk(a[k], b[k], [*keys, k])
                elif keys[:1] != ["extra"]:
                    default = _field_default([*keys, k])
                    if default is _NO_DEFAULT or _normalise(default, "", {}) != b[k]:
                        out.append(f"{'.'.join([*keys, k])}: new setting {b[k]!r}")
            return
        if a == b:
            return
        where = ".".join(keys)
        if isinstance(a, str) and isinstance(b, str) and a.startswith(CONTENT) and b.startswith(CONTENT):
            out.append(f"{where}: the content of {files.get(where, {}).get('path', '?')} changed")
        else:
            show = {CONTENT + v["hash"]: v["path"] for v in (*stored.get("files", {}).values(),
                                                              *current.get("files", {}).values())}
            out.append(f"{where}: {show.get(a, a)!r} -> {show.get(b, b)!r}")

    walk(stored.get("config", {}), current.get("config", {}), [])
    return out


def read_key(folder: str | Path) -> dict[str, Any] | None:
    """The key recorded in ``folder`` (None when there is none)."""
    path = Path(folder) / KEY_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def write_key(folder: str | Path, key: dict[str, Any]) -> None:
    """Record ``key`` in ``folder`` (atomically: a killed write leaves no half key)."""
    path = Path(folder) / KEY_FILE
    tmp = path.with_name(f".tmp-{KEY_FILE}")
    tmp.write_text(json.dumps(key, indent=1, sort_keys=True))
    os.replace(tmp, path)


def reuse_verdict(folder: str | Path, key: dict[str, Any]) -> list[str]:
    """Why the finished result in ``folder`` cannot stand for ``key``: ``[]`` when it can (same
    key up to ``key_changes``), else the changes, or one line saying no key was recorded."""
    stored = read_key(folder)
    if stored is None:
        return [f"no {KEY_FILE} recorded (made before reuse keys, or unfinished)"]
    return key_changes(stored, key)
