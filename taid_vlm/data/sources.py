"""Where records come from: every input becomes a ``datasets`` table, read lazily.

``open_records(source)`` returns a ``datasets.Dataset`` (map-style: Arrow on disk, memory-mapped,
so memory does not grow with the number of records) or, with ``streaming=True``, a
``datasets.IterableDataset``. Accepted sources:

- a local file: ``.json`` (a list of records, or ``{"data": [...]}``), ``.jsonl``, ``.txt`` (one
  document per blank-line separated paragraph), ``.parquet``, ``.arrow``;
- a local folder: one saved with ``save_to_disk`` (``Dataset`` or ``DatasetDict``), or an
  ``imagefolder`` (images + ``metadata.jsonl``/``metadata.csv``);
- a hub dataset id, loaded from the local Hugging Face cache (offline runs cannot download);
- an in-memory ``datasets.Dataset`` / ``DatasetDict`` / ``IterableDataset``.

JSON and text files are not parsed by Arrow's schema inference: real LLaVA files mix a string and a
list of strings in ``image``, which no single Arrow type holds. Each record is kept as one JSON
string (column ``JSON_COLUMN``) in a ``Dataset.from_generator`` table, parsed again when it is
used. The file is read incrementally (a JSON list is decoded record by record), so even start-up
memory stays flat. Undecodable bytes are kept as lone surrogates so that one bad string skips one
record (``bad_text``); a line that is not JSON, or a file that ends inside a record, becomes a
placeholder row that is skipped and counted as ``bad_record``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

JSON_COLUMN = "__json__"
SKIP_KEY = "__skip__"
ID_COLUMN = "__id__"
FILE_SUFFIXES = (".json", ".jsonl", ".txt", ".parquet", ".arrow", ".csv")
_CHUNK = 1 << 20
_WS = re.compile(r"\s*")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _skip_row(reason: str, detail: str) -> dict[str, Any]:
    return {SKIP_KEY: [reason, detail]}


def _iter_json_list(fh: Any) -> Iterator[tuple[Any, str | None]]:
    """``(record, its JSON text)`` of a JSON list, decoded one at a time from a text stream (the
    whole file is never held as Python objects). A file that ends inside the list yields one skip
    placeholder."""
    dec = json.JSONDecoder()
    buf, pos = fh.read(_CHUNK), 0
    pos = _WS.match(buf, pos).end()
    if buf[pos:pos + 1] == "{":
        # ``{"data": [...]}``: a wrapper object, read whole (this form is for small files).
        data = json.loads(buf + fh.read())
        records = data.get("data") if isinstance(data, dict) else None
        if not isinstance(records, list):
            raise ValueError(f"expected a JSON list of records (or {{'data': [...]}}), got keys {sorted(data)[:5]}")
        yield from ((r, None) for r in records)
        return
    if buf[pos:pos + 1] != "[":
        raise ValueError("expected a JSON list of records (or {'data': [...]})")
    pos += 1
    n = 0
    while True:
        pos = _WS.match(buf, pos).end()
        if pos >= len(buf):
            more = fh.read(_CHUNK)
            if not more:
                yield _skip_row("bad_record", f"the file ends after record {n} without closing the list"), None
                return
            buf, pos = buf[pos:] + more, 0
            continue
        c = buf[pos]
        if c == "]":
            return
        if c == ",":
            pos += 1
            continue
        try:
            obj, end = dec.raw_decode(buf, pos)
        except json.JSONDecodeError as err:
            more = fh.read(_CHUNK)
            if not more:
                yield _skip_row("bad_record", f"record {n}: {err.msg} (the file ends inside it)"), None
                return
            buf, pos = buf[pos:] + more, 0
            continue
        if end >= len(buf) and isinstance(obj, (int, float)):
            # A number at the buffer's end may continue in the next chunk.
            more = fh.read(_CHUNK)
            if more:
                buf, pos = buf[pos:] + more, 0
                continue
        yield obj, buf[pos:end]
        n += 1
        pos = end


def _iter_file(path: Path, text_column: str) -> Iterator[tuple[Any, str | None]]:
    """``(record, its JSON text or None)`` of a ``.json``/``.jsonl``/``.txt`` file."""
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as fh:
        if path.suffix == ".jsonl":
            for n, line in enumerate(fh):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except (json.JSONDecodeError, RecursionError) as err:  # RecursionError: nested too deep
                    yield _skip_row("bad_record", f"line {n + 1}: {str(err)[:200]}"), None
                    continue
                yield record, line.strip()
        elif path.suffix == ".txt":
            para: list[str] = []
            for line in fh:
                if line.strip():
                    para.append(line)
                elif para:
                    yield {text_column: "".join(para).strip()}, None
                    para = []
            if para:
                yield {text_column: "".join(para).strip()}, None
        else:
            yield from _iter_json_list(fh)


def iter_file_records(path: Path, text_column: str = "text") -> Iterator[Any]:
    """Raw records of a ``.json``/``.jsonl``/``.txt`` file; skip placeholders are
    ``{"__skip__": [reason, detail]}`` dicts."""
    for rec, _ in _iter_file(Path(path), text_column):
        yield rec


def _json_text(rec: Any, raw: str | None) -> str:
    """The record as JSON text Arrow can store: the file's own text when it is valid UTF-8 (no
    re-encoding), else ``json.dumps`` with ASCII escapes (lone surrogates from undecodable bytes
    survive as ``\\u`` escapes and are found when the record is used)."""
    if raw is not None and (raw.isascii() or not _SURROGATE.search(raw)):
        return raw
    return json.dumps(rec, ensure_ascii=True)


def _table_batches(path: Path, text_column: str, rows_per_batch: int = 20_000) -> Iterator[Any]:
    import pyarrow as pa

    from taid_vlm.data.formats import record_id

    texts: list[str] = []
    ids: list[str] = []
    for index, (rec, raw) in enumerate(_iter_file(path, text_column)):
        ok = isinstance(rec, dict) and SKIP_KEY not in rec
        texts.append(_json_text(rec, raw))
        ids.append(record_id(rec, index) if ok else str(index))
        if len(texts) == rows_per_batch:
            yield pa.record_batch({JSON_COLUMN: pa.array(texts, pa.string()), ID_COLUMN: pa.array(ids, pa.string())})
            texts, ids = [], []
    yield pa.record_batch({JSON_COLUMN: pa.array(texts, pa.string()), ID_COLUMN: pa.array(ids, pa.string())})


def _json_table_path(p: Path, cache_dir: str | None, text_column: str) -> Path:
    """Arrow file of a JSON/JSONL/TXT file, keyed by its path, size and mtime (an edited file is
    read again); written once in large batches straight with pyarrow, which is several times faster
    than ``Dataset.from_generator``'s per-example encoding."""
    import hashlib

    import datasets
    import pyarrow as pa

    st = p.stat()
    key = hashlib.sha256(f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}|{text_column}|v1".encode()).hexdigest()[:24]
    root = Path(cache_dir or datasets.config.HF_DATASETS_CACHE) / "taid_vlm_json"
    out = root / f"{p.stem[:40]}-{key}.arrow"
    if out.is_file():
        return out
    root.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(f".tmp{id(out)}")
    schema = pa.schema([(JSON_COLUMN, pa.string()), (ID_COLUMN, pa.string())])
    with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        for batch in _table_batches(p, text_column):
            writer.write_batch(batch)
    tmp.replace(out)  # atomic: a reader never sees half a table
    return out


def _json_rows(path: str, text_column: str) -> Iterator[dict[str, str]]:
    """Rows of the JSON-string table, one at a time (streams)."""
    from taid_vlm.data.formats import record_id

    for index, (rec, raw) in enumerate(_iter_file(Path(path), text_column)):
        rid = record_id(rec, index) if isinstance(rec, dict) and SKIP_KEY not in rec else str(index)
        yield {JSON_COLUMN: _json_text(rec, raw), ID_COLUMN: rid}


def _open_json_file(p: Path, streaming: bool, cache_dir: str | None, text_column: str) -> Any:
    import datasets

    if streaming:
        features = datasets.Features({JSON_COLUMN: datasets.Value("string"), ID_COLUMN: datasets.Value("string")})
        return datasets.IterableDataset.from_generator(
            _json_rows, features=features, gen_kwargs={"path": str(p.resolve()), "text_column": text_column})
    return datasets.Dataset.from_file(str(_json_table_path(p, cache_dir, text_column)))


def _pick_split(dd: Any, split: str, where: str) -> Any:
    if split in dd:
        return dd[split]
    raise ValueError(f"{where}: no split {split!r}; it has {', '.join(dd)} (set data.split)")


def _open_local(p: Path, streaming: bool, split: str, cache_dir: str | None, text_column: str,
                subset: str | list[str] | None = None) -> Any:
    import datasets

    if p.is_dir() and subset:
        # A local copy laid out as on the hub (README.md `configs:` naming each subset's files).
        return load_subsets(str(p), subset, split, streaming, cache_dir)
    if p.is_dir():
        if (p / "state.json").is_file() or (p / "dataset_dict.json").is_file():
            ds = datasets.load_from_disk(str(p))
            if isinstance(ds, datasets.DatasetDict):
                ds = _pick_split(ds, split, str(p))
            return ds.to_iterable_dataset() if streaming else ds
        return datasets.load_dataset("imagefolder", data_dir=str(p), split=split, streaming=streaming,
                                     cache_dir=cache_dir)
    if p.suffix in (".json", ".jsonl", ".txt"):
        return _open_json_file(p, streaming, cache_dir, text_column)
    builder = {".parquet": "parquet", ".arrow": "arrow", ".csv": "csv"}.get(p.suffix)
    if builder is None:
        raise ValueError(f"{p}: unknown data file type {p.suffix!r}; use .json, .jsonl, .txt, .parquet, .arrow, "
                         ".csv or a folder")
    return datasets.load_dataset(builder, data_files=str(p), split="train", streaming=streaming, cache_dir=cache_dir)


def load_subsets(name: str, subset: str | list[str], split: str, streaming: bool, cache_dir: str | None) -> Any:
    """``split`` of one subset (a datasets config name) of ``name``, or of several, concatenated in
    the order given, on the columns they all have (smollm-corpus's subsets share only ``text``)."""
    import datasets

    names = [subset] if isinstance(subset, str) else list(subset)
    parts = [datasets.load_dataset(name, n, split=split, streaming=streaming, cache_dir=cache_dir) for n in names]
    if len(parts) == 1:
        return parts[0]
    if all(p.column_names for p in parts):
        common = [c for c in parts[0].column_names if all(c in p.column_names for p in parts[1:])]
        parts = [p.select_columns(common) for p in parts]
    return datasets.concatenate_datasets(parts)


def _open_hub(name: str, streaming: bool, split: str, cache_dir: str | None,
              subset: str | list[str] | None = None) -> Any:
    import os

    import datasets

    if not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", name) or Path(name).suffix in FILE_SUFFIXES:
        raise FileNotFoundError(f"data file {name!r} does not exist (and it is not a hub dataset id)")
    try:
        if subset:
            return load_subsets(name, subset, split, streaming, cache_dir)
        return datasets.load_dataset(name, split=split, streaming=streaming, cache_dir=cache_dir)
    except Exception as err:  # noqa: BLE001 - any failure here means "not available"; say why and how
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
        how = ("HF_HUB_OFFLINE is set, so only datasets already in the local Hugging Face cache load; "
               "download it on a machine with access, or save it with save_to_disk and pass that folder"
               if offline else "check the id and your network")
        raise FileNotFoundError(f"{name!r} is not a local file or folder, and loading it as a hub dataset "
                                f"failed ({how}): {type(err).__name__}: {err}") from None


def looks_like_hub_id(value: str) -> bool:
    """``owner/name`` or ``name`` without a data-file suffix: checked when it is loaded, not as a path."""
    return bool(re.fullmatch(r"[\w.-]+(/[\w.-]+)?", value)) and Path(value).suffix not in FILE_SUFFIXES


def open_records(source: Any, *, streaming: bool = False, split: str = "train", cache_dir: str | None = None,
                 text_column: str = "text", subset: str | list[str] | None = None) -> Any:
    """Any accepted source (module docstring) -> ``datasets.Dataset`` or, when ``streaming`` (or the
    source is one), ``datasets.IterableDataset``; images are not decoded when rows are read.
    ``subset``: the config name(s) of a dataset with subsets (a hub id, or a local folder laid out so)."""
    import datasets

    if isinstance(source, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        source = _pick_split(source, split, "in-memory DatasetDict")
    if isinstance(source, (datasets.Dataset, datasets.IterableDataset)):
        ds = source
    elif isinstance(source, (str, Path)) and Path(source).exists():
        ds = _open_local(Path(source), streaming, split, cache_dir, text_column, subset)
    elif isinstance(source, (str, Path)):
        ds = _open_hub(str(source), streaming, split, cache_dir, subset)
    else:
        raise TypeError(f"data source of type {type(source).__name__}: pass a path, a hub id, or a datasets "
                        "Dataset / DatasetDict / IterableDataset")
    if streaming and isinstance(ds, datasets.Dataset):
        ds = ds.to_iterable_dataset()
    if isinstance(ds, datasets.IterableDataset):
        ds = ds.decode(False)  # image bytes/paths stay undecoded until their batch is built
    return ds


class ArrowRows:
    """Random access to the rows of a ``datasets.Dataset`` as plain dicts, images undecoded
    (``{"bytes", "path"}``), without copying or re-casting the table."""

    def __init__(self, ds: Any) -> None:
        self.ds = ds.with_format("arrow")
        self.columns = list(ds.column_names)

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.ds[int(i)].to_pylist()[0]


def decode_row(row: dict[str, Any]) -> Any:
    """A table row -> the raw record (JSON-string rows parsed); skip placeholders stay dicts with
    ``SKIP_KEY``."""
    if JSON_COLUMN in row:
        return json.loads(row[JSON_COLUMN])
    return row
