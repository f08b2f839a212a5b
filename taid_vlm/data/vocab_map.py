"""The shared vocabulary of two tokenizers: ids whose tokens stand for the same bytes."""

from __future__ import annotations

from typing import Any

import torch

# Byte-level BPE writes bytes as printable characters (GPT-2's table); rebuilt here, 10 lines.
_BYTE_CHARS = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]


def _byte_decoder() -> dict[str, int]:
    chars, n = list(_BYTE_CHARS), 0
    for b in range(256):
        if b not in _BYTE_CHARS:
            chars.append(256 + n)
            n += 1
    order = [*_BYTE_CHARS, *[b for b in range(256) if b not in _BYTE_CHARS]]
    return {chr(c): b for c, b in zip(chars, order)}


_BYTES = _byte_decoder()


def _decoder_kind(tokenizer: Any) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    dec = getattr(backend, "decoder", None)
    return type(dec).__name__ if dec is not None else ""


def token_strings(tokenizer: Any) -> list[bytes | None]:
    """The byte string each id of ``tokenizer`` stands for (``None`` when it cannot be told).

    Byte-level tokens are mapped back through the byte table; SentencePiece-style tokens have
    their ``▁`` turned into a space and ``<0xNN>`` into the byte; added/special tokens are their
    own text. Two tokenizers' ids with the same bytes are "the same token" for the shared vocabulary.
    """
    vocab = tokenizer.get_vocab()
    out: list[bytes | None] = [None] * len(tokenizer)
    byte_level = "ByteLevel" in _decoder_kind(tokenizer)
    added = set(getattr(tokenizer, "get_added_vocab", dict)())
    for tok, i in vocab.items():
        if i >= len(out):
            continue
        if tok in added:
            out[i] = tok.encode()
        elif byte_level:
            try:
                out[i] = bytes(_BYTES[c] for c in tok)
            except KeyError:
                out[i] = None
        elif len(tok) == 6 and tok.startswith("<0x") and tok.endswith(">"):
            out[i] = bytes([int(tok[3:5], 16)])
        else:
            out[i] = tok.replace("▁", " ").encode()
    return out


def shared_vocab(teacher_tok: Any, student_tok: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``(teacher_ids [S], student_ids [S])`` of the tokens whose byte strings are identical.

    Special tokens with the same role (eos, bos, pad, unk) are paired too even when their text
    differs (``<|im_end|>`` vs ``</s>``): they end a response the same way.
    """
    t_str, s_str = token_strings(teacher_tok), token_strings(student_tok)
    s_index: dict[bytes, int] = {}
    for i, b in enumerate(s_str):
        if b is not None and b not in s_index:
            s_index[b] = i
    pairs: dict[int, int] = {}
    used: set[int] = set()
    for i, b in enumerate(t_str):
        j = s_index.get(b) if b is not None else None
        if j is not None and j not in used:
            pairs[i] = j
            used.add(j)
    for role in ("eos_token_id", "bos_token_id", "pad_token_id", "unk_token_id"):
        a, b = getattr(teacher_tok, role, None), getattr(student_tok, role, None)
        if a is not None and b is not None and a not in pairs and b not in used:
            pairs[a] = b
            used.add(b)
    t_ids = torch.tensor(sorted(pairs), dtype=torch.long)
    return t_ids, torch.tensor([pairs[int(i)] for i in t_ids], dtype=torch.long)
