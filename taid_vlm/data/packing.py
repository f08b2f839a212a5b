"""Raw text for pre-training distillation: documents -> token rows packed to ``max_length``.

``pack_documents`` is a batched ``datasets.map`` function (map-style tables are packed once and
cached by ``datasets``; streams are packed lazily as they are read). Each document is tokenized
without special tokens and ends with the tokenizer's EOS; documents are laid end to end and cut
into rows of ``max_length`` tokens. ``position_ids`` restart at 0 at every document start (and at
every row start: a document cut by a row boundary continues as a new sequence).

Document boundaries in attention: with ``position_ids`` given and no ``attention_mask``,
transformers (>= 4.54) turns the position resets into a block-diagonal causal mask for every model
built on ``masking_utils.create_causal_mask`` (Llama, Qwen2/3, Mistral, Gemma 1-3, Phi-3, GPT-2,
GPT-NeoX, OLMo, ... with eager, sdpa or flex attention) and flash-attention-2 reads the resets as
varlen boundaries. Families still on their own mask code (and torch < 2.6) attend across
documents; the position ids still restart.

Labels (``PackedCollator``): every token is a target except the first of each sequence (position
0: nothing in its own document predicts it) and padding.
"""

from __future__ import annotations

from typing import Any

import torch

from taid_vlm.data.collate import IGNORE_INDEX
from taid_vlm.data.formats import check_text
from taid_vlm.data.sources import SKIP_KEY, decode_row
from taid_vlm.data.types import SkipSample

PACKED_COLUMNS = ("input_ids", "position_ids", "skipped", "docs")


def document_text(rec: Any, text_column: str) -> str:
    """The text of one record; ``SkipSample`` for a missing field, bad UTF-8 or an empty document."""
    if isinstance(rec, dict) and SKIP_KEY in rec:
        raise SkipSample(*rec[SKIP_KEY])
    if not isinstance(rec, dict):
        raise SkipSample("bad_record", f"record is {type(rec).__name__}, not an object")
    if text_column not in rec:
        raise SkipSample("missing_text", f"no {text_column!r} field among {sorted(rec)[:8]} (set data.text_column)")
    text = check_text(rec[text_column], text_column)
    if not text.strip():
        raise SkipSample("empty_document", "the text is empty")
    return text


def pack_documents(batch: dict[str, list], indices: list[int], *, tokenizer: Any, max_length: int,
                   text_column: str = "text", strict: bool = False) -> dict[str, list]:
    """Batched ``datasets.map`` function: a batch of records -> packed rows.

    Args:
        batch: columns of the records (a JSON-string column or the dataset's own columns).
        indices: the records' positions in the dataset (for skip messages).
        tokenizer: the student's (shared) tokenizer; ``eos_token_id`` ends every document.
        max_length: tokens per row.
    Returns:
        ``input_ids``/``position_ids`` (lists of ``<= max_length`` ints per row), ``skipped``
        (``[doc id, reason, detail]`` triples) and ``docs`` (records read) on the batch's first
        row. A batch whose records were all skipped gives one empty row that carries the counts.
    """
    keys = list(batch)
    texts, skipped = [], []
    for vals, index in zip(zip(*(batch[k] for k in keys)), indices):
        try:
            texts.append(document_text(decode_row(dict(zip(keys, vals))), text_column))
        except SkipSample as skip:
            if strict:
                raise SkipSample(skip.reason, f"document {index}: {skip.detail}") from None
            skipped.append([f"doc {index}", skip.reason, skip.detail])
    eos = tokenizer.eos_token_id
    ids_out: list[list[int]] = []
    pos_out: list[list[int]] = []
    row: list[int] = []
    pos: list[int] = []
    for ids in tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []:
        ids = list(ids) + ([eos] if eos is not None else [])
        p = 0
        while ids:
            take = ids[: max_length - len(row)]
            row += take
            pos += range(p, p + len(take))
            p += len(take)
            ids = ids[len(take):]
            if len(row) == max_length:
                ids_out.append(row)
                pos_out.append(pos)
                row, pos, p = [], [], 0
    if row or not ids_out:
        ids_out.append(row)
        pos_out.append(pos)
    n = len(ids_out)
    return {"input_ids": ids_out, "position_ids": pos_out, "skipped": [skipped] + [[] for _ in range(n - 1)],
            "docs": [len(indices)] + [0] * (n - 1)}


def pack_dataset(ds: Any, tokenizer: Any, max_length: int, *, text_column: str = "text", strict: bool = False,
                 batch_size: int = 1000) -> Any:
    """A records ``Dataset``/``IterableDataset`` -> the same kind of dataset of packed rows."""
    kwargs = {"tokenizer": tokenizer, "max_length": max_length, "text_column": text_column, "strict": strict}
    cols = ds.column_names
    return ds.map(pack_documents, batched=True, batch_size=batch_size, with_indices=True, fn_kwargs=kwargs,
                  remove_columns=cols)


def count_packed(ds: Any, report: Any) -> None:
    """Count the documents read and skipped of a packed map-style table into ``report`` (in Arrow)."""
    import pyarrow.compute as pc

    table = ds.with_format("arrow")[:]  # a pyarrow Table over the memory-mapped file
    report.count_read(int(pc.sum(table["docs"]).as_py() or 0))
    for triples in table.filter(pc.greater(pc.list_value_length(table["skipped"]), 0))["skipped"].to_pylist():
        for sid, reason, detail in triples:
            report.skip(reason, detail, sample_id=sid)


class PackedCollator:
    """Packed rows -> ``{"student", "teacher", "ids", "num_tokens", "skipped", "read"}``.

    ``student`` (and ``teacher``, the same tensors: both see the same sequences) holds
    ``input_ids [B, L]``, ``position_ids [B, L]`` and ``labels [B, L]`` (-100 at position 0 of each
    sequence and on padding) and no ``attention_mask``, so transformers builds the per-document
    mask from the position ids. ``skipped``/``read`` carry the rows' document counts when
    ``count`` is on (streams, whose counts are only known as they are read).
    """

    def __init__(self, pad_id: int, *, teacher: bool, count: bool = False) -> None:
        self.pad_id, self.teacher, self.count = pad_id, teacher, count

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        skipped = [tuple(s) for r in rows for s in (r.get("skipped") or [])] if self.count else []
        read = sum(int(r.get("docs") or 0) for r in rows) if self.count else 0
        rows = [r for r in rows if r["input_ids"]]
        if not rows:
            return {"student": None, "teacher": None, "ids": [], "num_tokens": 0, "skipped": skipped, "read": read}
        width = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        pos = torch.arange(width).repeat(len(rows), 1)  # padding is its own sequence
        for i, r in enumerate(rows):
            n = len(r["input_ids"])
            ids[i, :n] = torch.as_tensor(r["input_ids"])
            pos[i, :n] = torch.as_tensor(r["position_ids"])
            pos[i, n:] = torch.arange(width - n)
        labels = ids.clone()
        labels[pos == 0] = IGNORE_INDEX
        for i, r in enumerate(rows):
            labels[i, len(r["input_ids"]):] = IGNORE_INDEX
        batch = {"input_ids": ids, "position_ids": pos, "labels": labels}
        return {
            "student": batch, "teacher": dict(batch) if self.teacher else None,
            "ids": [f"row {i}" for i in range(len(rows))],
            "num_tokens": int((labels[:, 1:] != IGNORE_INDEX).sum()), "skipped": skipped, "read": read,
        }
