"""The training and validation data of a run, from ``data.*`` config: what the trainer iterates.

Three shapes, chosen by the config:

- map-style chat records (the default): ``LazySamples`` over a memory-mapped ``datasets`` table,
  converted to samples in the loader and encoded by ``PairCollator``; order by ``MicroBatchPlan``;
- streamed records (``data.streaming``): the same conversion over a ``datasets.IterableDataset``,
  read in order by a ``StreamPlan`` whose position is saved with each checkpoint;
- raw text (``data.format: text``): documents packed into ``max_length`` token rows
  (``taid_vlm.data.packing``), map-style or streamed, collated by ``PackedCollator``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from taid_vlm.data.formats import RecordOptions
from taid_vlm.data.lazy import LazySamples, StreamSamples
from taid_vlm.data.report import DataReport
from taid_vlm.data.sources import ArrowRows, open_records


@dataclass
class TrainData:
    """``items``: a sequence (map-style) or ``None``; ``stream``: an ``IterableDataset`` or ``None``;
    ``to_items``: stream -> iterable of items; ``collate``; ``val``: a list for the validation hook."""

    items: Any
    stream: Any
    to_items: Any
    collate: Any
    val: list


def _name(source: Any) -> str:
    return Path(source).name if isinstance(source, (str, Path)) else type(source).__name__


def record_options(dcfg: Any, source: Any) -> RecordOptions:
    """Image root: ``data.image_root``, else the data file's folder (a folder input: itself), else
    none (hub and in-memory data: paths as they are, usually embedded bytes)."""
    root = dcfg.image_root
    if root is None and isinstance(source, (str, Path)) and Path(source).exists():
        p = Path(source)
        root = str(p if p.is_dir() else p.parent)
    return RecordOptions(image_root=root, allow_outside_root=dcfg.allow_absolute_paths, max_images=dcfg.max_images)


def open_source(dcfg: Any, source: Any, streaming: bool) -> Any:
    """``source`` opened with the ``data`` section's options (split, cache, text column, subsets)."""
    return open_records(source, streaming=streaming, split=dcfg.split, cache_dir=dcfg.cache_dir,
                        text_column=dcfg.text_column, subset=dcfg.subset)


def _text_data(dcfg: Any, tokenizer: Any, report: DataReport, has_teacher: bool) -> TrainData:
    import numpy as np
    import pyarrow.compute as pc

    from taid_vlm.data.packing import PackedCollator, count_packed, pack_dataset

    def packed(source: Any, streaming: bool) -> Any:
        return pack_dataset(open_source(dcfg, source, streaming), tokenizer, dcfg.max_length,
                            text_column=dcfg.text_column, strict=dcfg.strict)

    def rows(ds: Any) -> Any:
        # Rows that only carry the counts of an all-skipped batch are left out of the order.
        keep = np.flatnonzero(pc.list_value_length(ds.with_format("arrow")["input_ids"]).to_numpy() > 0)
        return ArrowRows(ds.select(keep) if len(keep) < len(ds) else ds)

    val: list = []
    if dcfg.val:
        v = rows(packed(dcfg.val, False))
        val = [v[i] for i in range(len(v))]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if dcfg.streaming:
        return TrainData(None, packed(dcfg.train, True), lambda ds: ds,
                         PackedCollator(pad, teacher=has_teacher, count=True), val)
    ds = packed(dcfg.train, False)
    count_packed(ds, report)
    return TrainData(rows(ds), None, None, PackedCollator(pad, teacher=has_teacher), val)


def load_train_data(dcfg: Any, tokenizer: Any, report: DataReport, *, has_teacher: bool,
                    make_collate: Any, items: Any = None) -> TrainData:
    """The run's data from a ``DataConfig``; ``make_collate()`` builds the chat collator.

    Map-style records are counted as read up front; their skips are counted when the loader meets
    them (``DataReport.absorb``). Stream records are counted as they are read. ``items``: the
    ``LazySamples`` of ``data.train`` when the pre-flight check already opened them.
    """
    if dcfg.format == "text":
        return _text_data(dcfg, tokenizer, report, has_teacher)
    from taid_vlm.data.readers import load_samples

    fmt = "auto" if dcfg.format == "hf" else dcfg.format
    opts = record_options(dcfg, dcfg.train)
    name = _name(dcfg.train)
    val = []
    if dcfg.val:
        val = load_samples(dcfg.val, format=dcfg.format, image_root=dcfg.image_root, strict=dcfg.strict,
                           report=DataReport(), validate_images=False, allow_outside_root=dcfg.allow_absolute_paths,
                           split=dcfg.split, cache_dir=dcfg.cache_dir, max_images=dcfg.max_images, subset=dcfg.subset)
    if dcfg.streaming:
        def to_items(ds: Any) -> Any:
            return StreamSamples(ds, fmt, opts, name, dcfg.strict)

        return TrainData(None, open_source(dcfg, dcfg.train, True), to_items, make_collate(), val)
    if items is None:
        items = LazySamples(open_source(dcfg, dcfg.train, False), fmt, opts, name, dcfg.strict)
    report.count_read(len(items))
    return TrainData(items, None, None, make_collate(), val)
