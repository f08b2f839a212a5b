"""Files -> ``Sample`` lists: JSON / JSONL records, and local datasets through ``datasets``.

``load_samples`` reads every record, converts it with the format's converter (``formats.py``),
optionally decodes each image once to find bad ones, skips and counts bad records in a
``DataReport`` (or raises with ``strict=True``) and returns the good samples in file order.

Inputs: ``.json`` (a list of records, or ``{"data": [...]}``), ``.jsonl``; through ``datasets``
(``taid_vlm.data.sources``): ``.parquet``/``.arrow`` (image columns as ``{"bytes": ..., "path": ...}``
structs or ``Image`` features), a folder saved with ``save_to_disk``, an ``imagefolder`` folder
with ``metadata.jsonl``/``metadata.csv``, hub ids in the local cache, in-memory datasets.

``load_samples`` holds every sample in memory: it is for evaluation sets, the teacher cache and
small data. Training reads records lazily (``taid_vlm.data.loading``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from taid_vlm.data.formats import FORMATS, RecordOptions, record_to_sample
from taid_vlm.data.images import DEFAULT_MAX_PIXELS
from taid_vlm.data.report import DataReport
from taid_vlm.data.sources import ArrowRows, decode_row
from taid_vlm.data.types import Sample, SkipSample

READ_FORMATS = ("auto", *FORMATS, "hf")

__all__ = ["DataReport", "READ_FORMATS", "iter_records", "load_samples"]


def _json_records(path: Path) -> Iterator[Any]:
    # surrogateescape keeps undecodable bytes as lone surrogates, so one bad string skips one
    # record (``bad_text``) instead of failing the whole file.
    text = path.read_bytes().decode("utf-8", errors="surrogateescape")
    if path.suffix == ".jsonl":
        for n, line in enumerate(text.splitlines()):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except (json.JSONDecodeError, RecursionError) as err:  # RecursionError: nested too deep
                yield SkipSample("bad_record", f"line {n + 1}: {str(err)[:200]}")
        return
    data = json.loads(text)
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of records (or {{'data': [...]}}), got {type(data).__name__}")
    yield from data


def iter_records(path: Any, format: str = "auto", cache_dir: str | None = None, split: str = "train",
                 subset: str | list[str] | None = None) -> Iterator[Any]:
    """Raw records of one source (a ``SkipSample`` instance stands for an unreadable line or record).

    ``.json``/``.jsonl`` files are read directly; everything else (parquet, arrow, folders, hub ids,
    in-memory datasets) through ``taid_vlm.data.sources.open_records``, images undecoded.
    """
    if isinstance(path, (str, Path)):
        p = Path(path)
        if format != "hf" and p.is_file() and p.suffix in (".json", ".jsonl"):
            yield from _json_records(p)
            return
        if not p.exists() and not isinstance(path, str):
            raise FileNotFoundError(f"data file {str(p)!r} does not exist")
    from taid_vlm.data.sources import SKIP_KEY, open_records

    ds = open_records(path, split=split, cache_dir=cache_dir, subset=subset)
    for row in (ArrowRows(ds) if hasattr(ds, "with_format") and hasattr(ds, "__len__") else ds):
        rec = decode_row(row)
        yield SkipSample(*rec[SKIP_KEY]) if isinstance(rec, dict) and SKIP_KEY in rec else rec


def _unique(sid: str, seen: dict[str, int]) -> str:
    """Sample ids key the teacher cache, so duplicates get ``#2``, ``#3``, ... suffixes."""
    n = seen.get(sid, 0) + 1
    seen[sid] = n
    return sid if n == 1 else f"{sid}#{n}"


def load_samples(
    path: str | Path | list[str | Path],
    *,
    format: str = "auto",
    image_root: str | Path | None = None,
    strict: bool = False,
    report: DataReport | None = None,
    validate_images: bool = True,
    allow_outside_root: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_side: int = 1,
    max_side: int | None = None,
    caption_prompt: str = "Describe the image.",
    vqa_template: str = "{question}",
    limit: int | None = None,
    cache_dir: str | None = None,
    split: str = "train",
    max_images: int | None = None,
    subset: str | list[str] | None = None,
) -> list[Sample]:
    """Read records into samples, skipping and counting bad ones.

    Args:
        path: a data file or folder (see the module docstring), a hub dataset id (local cache), an
            in-memory ``datasets.Dataset``/``DatasetDict``/``IterableDataset``, or a list of them.
        format: ``auto`` (per record, from its fields), ``llava``, ``messages``, ``vqa``,
            ``caption``, or ``hf`` (read through ``datasets``, then per-record auto).
        image_root: folder that relative image paths are resolved in; default: the data file's
            folder (the folder itself for a folder input).
        strict: raise the first ``SkipSample`` instead of skipping.
        report: a ``DataReport`` to count into (a new one is made otherwise).
        validate_images: decode every image once now so bad images are skipped here, not in
            the middle of training (images are not kept in memory).
        allow_outside_root, max_pixels, min_side, max_side: see ``ImageRef``.
        caption_prompt, vqa_template: user prompts of caption and VQA records.
        limit: stop after this many used samples.
        cache_dir: ``datasets`` cache folder for parquet/imagefolder inputs.
        split: the split of a ``DatasetDict`` or hub dataset.
        max_images: skip records with more images (``too_many_images``); ``None``: no cap.
        subset: config name(s) of a dataset with subsets (hub id or a local folder laid out so).
    Returns:
        The usable samples in file order; ids are unique (duplicates get ``#n`` suffixes).
    """
    if format not in READ_FORMATS:
        raise ValueError(f"data format {format!r} unknown; valid: {', '.join(READ_FORMATS)}")
    report = report if report is not None else DataReport()
    # Eager: every sample is held in memory. Training reads large data lazily instead
    # (taid_vlm.data.loading); this is for evaluation sets, the teacher cache and small data.
    paths = path if isinstance(path, (list, tuple)) else [path]
    out: list[Sample] = []
    seen: dict[str, int] = {}
    for one in paths:
        local = isinstance(one, (str, Path)) and Path(one).exists()
        p = Path(one) if local else Path(str(one) if isinstance(one, (str, Path)) else type(one).__name__)
        root = image_root if image_root is not None else ((p if p.is_dir() else p.parent) if local else None)
        opts = RecordOptions(str(root), allow_outside_root, max_pixels, min_side, max_side, caption_prompt,
                             vqa_template, max_images)
        fmt = "auto" if format == "hf" else format
        for index, rec in enumerate(iter_records(one, format, cache_dir, split, subset)):
            if limit is not None and len(out) >= limit:
                return out
            report.count_read()
            try:
                if isinstance(rec, SkipSample):
                    raise rec
                sample = record_to_sample(rec, fmt, index, opts)
                sample.id = _unique(sample.id, seen)
                if validate_images:
                    for ref in sample.images:
                        ref.check()
            except SkipSample as skip:
                if strict:
                    raise SkipSample(skip.reason, f"{p.name} record {index}: {skip.detail}") from None
                report.skip(skip.reason, f"{p.name} record {index}: {skip.detail}")
                continue
            out.append(sample)
    return out
