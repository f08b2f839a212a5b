"""Records turned into ``Sample``s only when they are used (in the loader, a worker if configured).

``LazySamples`` is a map-style sequence over a ``datasets.Dataset``; ``StreamSamples`` iterates a
``datasets.IterableDataset``. A record that cannot be used becomes a ``BadRecord`` item, which the
collator counts in the data report (``batch["skipped"]`` -> ``DataReport.absorb`` in the trainer)
and leaves out of the batch; with ``strict`` it raises instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from taid_vlm.data.formats import RecordOptions, record_id, record_to_sample
from taid_vlm.data.sources import ID_COLUMN, SKIP_KEY, ArrowRows, decode_row
from taid_vlm.data.types import Sample, SkipSample


@dataclass
class BadRecord:
    """A record skipped when it was converted: ``id``, the ``SkipSample`` ``reason`` and ``detail``."""

    id: str
    reason: str
    detail: str


def convert(row: dict[str, Any], fmt: str, index: int, opts: RecordOptions, name: str, strict: bool,
            sid: str | None = None) -> Sample | BadRecord:
    """One table row -> ``Sample`` (id ``sid`` when given), or ``BadRecord`` (raises when ``strict``)."""
    try:
        rec = decode_row(row)
        if isinstance(rec, dict) and SKIP_KEY in rec:
            raise SkipSample(*rec[SKIP_KEY])
        sample = record_to_sample(rec, fmt, index, opts)
        if sid is not None:
            sample.id = sid
        return sample
    except SkipSample as skip:
        detail = f"{name} record {index}: {skip.detail}"
        if strict:
            raise SkipSample(skip.reason, detail) from None
        return BadRecord(sid or str(index), skip.reason, detail)


def duplicate_ids(ds: Any, chunk: int = 100_000) -> dict[int, str]:
    """``{row: "id#n"}`` for the 2nd, 3rd, ... rows sharing an id (sample ids key the teacher cache
    and the once-per-sample skip count).

    Memory stays small at millions of rows: ids are hashed chunk by chunk into one int64 array
    (8 bytes a row) and sorted; only rows whose hash repeats are compared as strings. (A hash
    table of the strings, such as Arrow's ``value_counts``, took ~240 MB at 2M rows.) Python's
    ``hash`` is salted per process, which is fine: the hashes never leave this call.
    """
    import numpy as np

    col_name = next((c for c in (ID_COLUMN, "id", "question_id", "image_id") if c in ds.column_names), None)
    if col_name is None or len(ds) < 2:
        return {}
    # The memory-mapped column itself when rows are not re-indexed (no copy of 2M strings).
    col = ds.data.column(col_name) if getattr(ds, "_indices", None) is None else ds.with_format("arrow")[col_name]
    def chunk_hashes() -> Any:
        for start in range(0, len(col), chunk):
            yield start, np.fromiter((hash(str(v)) for v in col.slice(start, chunk).to_pylist()), np.int64)

    hashes = np.empty(len(col), dtype=np.int64)
    for start, h in chunk_hashes():
        hashes[start:start + len(h)] = h
    hashes.sort()  # in place: no second array of 8 bytes a row
    repeated = np.unique(hashes[1:][hashes[1:] == hashes[:-1]])
    del hashes
    if len(repeated) == 0:
        return {}
    rows = [start + i for start, h in chunk_hashes() for i in np.flatnonzero(np.isin(h, repeated)).tolist()]
    seen: dict[str, int] = {}
    out: dict[int, str] = {}
    for r in rows:
        sid = str(col[r].as_py())
        seen[sid] = seen.get(sid, 0) + 1
        if seen[sid] > 1:
            out[r] = f"{sid}#{seen[sid]}"
    return out


class LazySamples:
    """``len`` and ``[i]`` over a ``datasets.Dataset``: row ``i`` converted on access.

    Args:
        ds: the records (``taid_vlm.data.sources.open_records``).
        fmt: a record format or ``auto``.
        opts: ``RecordOptions`` (image root, size bounds, prompts).
        name: what the records are called in skip messages (the file name).
        strict: raise ``SkipSample`` instead of returning ``BadRecord``.
    """

    def __init__(self, ds: Any, fmt: str, opts: RecordOptions, name: str = "data", strict: bool = False) -> None:
        self.rows = ArrowRows(ds)
        self.fmt, self.opts, self.name, self.strict = fmt, opts, name, strict
        self.renamed = duplicate_ids(ds)
        self._id_col = ID_COLUMN in self.rows.columns

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> Sample | BadRecord:
        row = self.rows[i]
        sid = self.renamed.get(int(i))
        if sid is None and self._id_col:
            sid = row[ID_COLUMN]
        return convert(row, self.fmt, int(i), self.opts, self.name, self.strict, sid)


class StreamSamples:
    """Iterates a ``datasets.IterableDataset`` as ``Sample`` / ``BadRecord`` items. Ids are the
    records' own (or their position in the stream); a stream is not de-duplicated."""

    def __init__(self, ds: Any, fmt: str, opts: RecordOptions, name: str = "data", strict: bool = False) -> None:
        self.ds, self.fmt, self.opts, self.name, self.strict = ds, fmt, opts, name, strict

    def __iter__(self) -> Iterator[Sample | BadRecord]:
        for index, row in enumerate(self.ds):
            sid = row.get(ID_COLUMN)
            if sid is None:
                try:
                    sid = record_id(decode_row(row), index)
                except Exception:  # noqa: BLE001 - a broken row still needs an id for its skip entry
                    sid = str(index)
            yield convert(row, self.fmt, index, self.opts, self.name, self.strict, sid)
