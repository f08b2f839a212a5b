"""On-disk format of the teacher top-k cache, and its fingerprint.

``DIR/index.json`` lists the shards and holds the fingerprint; each ``shard-XXXXX.safetensors``
covers a fixed chunk of the data set and holds, for every response token of its samples:

- ``topk_ids``      int32   ``[T, k]``  the teacher's k most likely next tokens;
- ``topk_logprobs`` float16 ``[T, k]``  (or float32) their log-probabilities;
- ``rest_mass``     float32 ``[T]``     the probability mass of all other tokens;
- ``targets``       int32   ``[T]``     the response token itself, in the teacher's tokenizer
  (the alignment check; the text that cross-tokenizer alignment decodes);
- ``run_start``     uint8   ``[T]``     1 where a token starts an assistant turn's response (the
  turn boundaries cross-tokenizer alignment pairs up);
- ``offsets``       int64   ``[S+1]``   row range of each sample; sample ids in the metadata.

At k=64 with float16 log-probs that is 64*4 + 64*2 + 4 + 4 + 1 = 393 bytes per response token.
``DIR/teacher_tokenizer/`` is a copy of the teacher's tokenizer (``save_pretrained``): with it a
student with another tokenizer rebuilds the teacher tokens' character spans by decoding
``targets``, without the teacher's files.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from taid_vlm.run_key import hash_path  # noqa: F401 - the content hash the cache and the reuse keys share

INDEX = "index.json"
TOKENIZER_DIR = "teacher_tokenizer"
FORMAT_VERSION = 1


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def tokenizer_hash(tokenizer: Any) -> str:
    """Hash of what decides the token ids: vocab, merges, added tokens, normaliser, pre-tokeniser.

    The decoder, post-processor, padding and truncation settings are left out: they do not change
    the ids of a text, and the class that loads a tokenizer may rewrite them (transformers 5 loads a
    qwen2 checkpoint's tokenizer as Qwen2Tokenizer), which must not make a valid cache look stale.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return _sha(json.dumps(tokenizer.get_vocab(), sort_keys=True).encode())
    spec = json.loads(backend.to_str())
    keep = {k: spec.get(k) for k in ("model", "normalizer", "pre_tokenizer")}
    # "" and None mean the same for a BPE's subword prefix / word suffix; loaders write either.
    keep["model"] = {k: (None if v == "" else v) for k, v in (keep["model"] or {}).items()}
    keep["added_tokens"] = sorted((t["id"], t["content"], t.get("special")) for t in spec.get("added_tokens", []))
    return _sha(json.dumps(keep, sort_keys=True).encode())


def fingerprint(*, data: str, tokenizer: Any, template: str | None, max_length: int,
                teacher: str = "") -> dict[str, str]:
    """What a cache depends on. Training compares every field but ``teacher`` (not loaded then)."""
    return {
        "data": hash_path(data),
        "tokenizer": tokenizer_hash(tokenizer),
        "chat_template": _sha((template or "").encode()),
        "max_length": str(max_length),
        "teacher": teacher,
    }


def compare_fingerprints(stored: dict[str, str], current: dict[str, str]) -> list[str]:
    """Fields (except ``teacher``) whose values differ."""
    return [k for k in stored if k != "teacher" and k in current and stored[k] != current[k]]


def write_shard(path: Path, ids: list[str], rows: dict[str, torch.Tensor]) -> None:
    """Write one shard atomically (temp file, then rename)."""
    tmp = path.with_name(f".tmp-{path.name}")
    save_file({k: v.contiguous() for k, v in rows.items()}, str(tmp), metadata={"ids": json.dumps(ids)})
    os.replace(tmp, path)


def read_shard(path: Path) -> tuple[list[str], dict[str, torch.Tensor]]:
    """Sample ids and tensors of one shard."""
    with safe_open(str(path), framework="pt") as f:
        ids = json.loads(f.metadata()["ids"])
        rows = {k: f.get_tensor(k) for k in f.keys()}
    return ids, rows


def write_index(cache_dir: Path, meta: dict[str, Any]) -> None:
    tmp = cache_dir / f".tmp-{INDEX}"
    tmp.write_text(json.dumps({"version": FORMAT_VERSION, **meta}, indent=2))
    os.replace(tmp, cache_dir / INDEX)


def read_index(cache_dir: str | Path) -> dict[str, Any]:
    path = Path(cache_dir) / INDEX
    if not path.is_file():
        raise FileNotFoundError(f"teacher.cache: {str(cache_dir)!r} has no {INDEX}; run `taid-vlm cache-teacher` "
                                "to completion first")
    index = json.loads(path.read_text())
    if index.get("version") != FORMAT_VERSION:
        raise ValueError(f"teacher.cache: format version {index.get('version')} is not {FORMAT_VERSION}")
    return index
