"""Check the records of a file-based training set before any weights load, and stop a run that
could not learn: no usable record, or more unusable ones than ``data.max_bad_fraction``.

What is checked, per record: it converts to a sample (fields, roles, non-empty answer), and each
image path stays inside the image root, names a file, and has a readable header within the size
bounds (``ImageRef.check_header``: no pixel decode). Encoding-time problems (a response cut by
``data.max_length``) are still found in training and counted there.

How much: every record up to ``data.preflight_records`` (default 10,000), else a seeded uniform
sample of that many, whose bad share estimates the set's. The check is a pure function of the
data and the config, so under ``accelerate launch`` every rank reaches the same verdict without
talking to the others (no collective, no hang). Streams are not checked up front: the trainer
stops a stream whose first batches hold no usable record (``check_first_batches``).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from taid_vlm.config import ConfigError
from taid_vlm.data.lazy import BadRecord
from taid_vlm.data.report import FIXES, DataReport
from taid_vlm.data.types import SkipSample

# Streams: stop when this many first optimizer steps held no usable record.
FIRST_BATCHES = 4


class DataError(ConfigError):
    """The training data cannot teach anything (or too little of it is usable); found before training."""


def _indices(n: int, limit: int, seed: int) -> list[int]:
    return list(range(n)) if n <= limit else sorted(random.Random(seed).sample(range(n), limit))


def check_items(items: Any, report: DataReport, limit: int, seed: int = 0, strict: bool = False) -> int:
    """Check up to ``limit`` of ``items`` (``LazySamples`` or a list of samples), counting each bad
    one in ``report`` under its sample id (the id the collator would use, so nothing counts twice);
    ``strict`` raises the first ``SkipSample`` instead. Returns how many records were checked and
    sets ``report.checked``."""
    idx = _indices(len(items), limit, seed)
    for i in idx:
        x = items[i]
        if isinstance(x, BadRecord):
            report.skip(x.reason, x.detail, sample_id=x.id)
            continue
        for ref in x.images:
            try:
                ref.check_header()
            except SkipSample as skip:
                detail = skip.detail
                if skip.reason == "path_escape":  # as the collator words it: the skip names the settings
                    detail += f"; {FIXES[skip.reason]}"
                if strict:
                    raise SkipSample(skip.reason, f"sample {x.id!r}: {detail}") from None
                report.skip(skip.reason, detail, sample_id=x.id)  # examples read "ID: detail"
                break
    report.checked = len(idx)
    return len(idx)


def stop_if_unusable(report: DataReport, source: str, max_bad_fraction: float) -> None:
    """Raise ``DataError`` with the reasons, examples and fixes when the checked records hold none
    usable, or a bad share above ``max_bad_fraction``."""
    checked = report.checked if report.checked is not None else report.read
    bad = sum(report.skipped.values())
    if checked == 0:
        raise DataError(f"data.train: {source!r} holds no records; nothing to train on")
    if bad < checked and bad / checked <= max_bad_fraction:
        return
    head = (f"data.train: none of the {checked} records checked in {source!r} is usable" if bad >= checked else
            f"data.train: {bad} of the {checked} records checked in {source!r} ({bad / checked:.0%}) are unusable, "
            f"more than data.max_bad_fraction {max_bad_fraction} allows")
    tail = "" if bad >= checked else "\n  (to train on the usable records anyway, raise data.max_bad_fraction)"
    raise DataError(unusable_message(report, f"{head}; stopped before training") + tail)


def unusable_message(report: DataReport, head: str) -> str:
    """``head``, then each skip reason with its count, an example and the fix."""
    lines = [f"{head}. By reason:" if report.skipped else f"{head}."]
    for reason, n in sorted(report.skipped.items(), key=lambda kv: -kv[1]):
        lines.append(f"  {reason} {n}, e.g. {report.examples.get(reason, ['?'])[0]}")
        if reason in FIXES:
            lines.append(f"    fix: {FIXES[reason]}")
    return "\n".join(lines)


def first_batches_error(report: DataReport, steps: int) -> DataError:
    """The error of a run whose first ``steps`` optimizer steps held no usable token (a stream of bad
    records, or records whose responses are all cut or empty); nothing was trained."""
    return DataError(unusable_message(report, f"data.train: the first {steps} optimizer steps held no usable "
                                               f"record (no response token to learn from); stopped, nothing was "
                                               f"trained ({report.summary()})"))


def preflight(dcfg: Any, seed: int = 0) -> DataReport | None:
    """Check ``data.train`` when it is a local file or folder of chat/VQA/caption records; ``None``
    when there is nothing to check up front (streams, raw text, hub ids, the check turned off).

    Returns the report of the check; its ``items`` attribute holds the ``LazySamples`` it checked,
    which the run then trains on (the id de-duplication of millions of rows is not done twice)."""
    if dcfg.streaming or dcfg.format == "text" or not dcfg.preflight_records:
        return None
    if not isinstance(dcfg.train, (str, Path)) or not Path(dcfg.train).exists():
        return None
    from taid_vlm.data.lazy import LazySamples
    from taid_vlm.data.loading import open_source, record_options

    try:
        ds = open_source(dcfg, dcfg.train, streaming=False)  # as the run opens it (data.subset included)
        fmt = "auto" if dcfg.format == "hf" else dcfg.format
        items = LazySamples(ds, fmt, record_options(dcfg, dcfg.train), Path(dcfg.train).name, dcfg.strict)
    except (ValueError, RecursionError, OSError) as err:  # not records at all: empty, not JSON, too deep
        raise ConfigError(f"data.train: cannot read {str(dcfg.train)!r}: {str(err)[:300]}") from None
    report = DataReport()  # its read count is added when the run reads the records
    check_items(items, report, dcfg.preflight_records, seed, dcfg.strict)
    stop_if_unusable(report, str(dcfg.train), dcfg.max_bad_fraction)
    report.items = items
    return report
