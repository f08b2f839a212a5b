"""Counts of one pass over the data: records read, used, skipped by reason."""

from __future__ import annotations

from collections import Counter
from typing import Any

# What to change when records are skipped for a reason (printed with the counts).
FIXES = {
    "path_escape": "to use images there, set data.image_root to a folder that holds them or "
                   "data.allow_absolute_paths: true",
    "missing_image": "relative image paths are looked for in data.image_root (default: the data file's "
                     "folder); set it to the folder that holds the images",
    "corrupt_image": "replace or remove those files (empty, truncated or not an image)",
    "image_too_large": "resize those images (the bound is checked from the header, before decoding)",
    "bad_path": "fix those image paths (a NUL byte, too long, a symlink loop)",
}


class DataReport:
    """Records read, used and skipped by reason.

    Skips raised while encoding (in the collator) recur every epoch for the same sample; pass
    ``sample_id`` and a sample is counted once however often it is skipped. ``used`` is
    ``read - skipped``: a sample dropped after reading (e.g. at encoding time) stops being used.
    """

    MAX_EXAMPLES = 3

    def __init__(self) -> None:
        self.read = 0
        self.checked: int | None = None  # records checked before training (None: no such check)
        self.items: Any = None  # the checked records (data.preflight), reused by the run; never saved
        self.skipped: Counter[str] = Counter()
        self.examples: dict[str, list[str]] = {}
        self._skipped_ids: set[str] = set()

    @property
    def used(self) -> int:
        return max(0, self.read - sum(self.skipped.values()))

    def count_read(self, n: int = 1) -> None:
        self.read += n

    def skip(self, reason: str, detail: str = "", sample_id: str | None = None) -> None:
        """Count one skipped record (once per ``sample_id`` when given)."""
        if sample_id is not None:
            if sample_id in self._skipped_ids:
                return
            self._skipped_ids.add(sample_id)
        self.skipped[reason] += 1
        ex = self.examples.setdefault(reason, [])
        if len(ex) < self.MAX_EXAMPLES:
            ex.append(f"{sample_id}: {detail}" if sample_id is not None else detail)

    def absorb(self, batch: dict[str, Any] | None) -> None:
        """Count the ``skipped`` entries of a ``PairCollator`` batch (made in a worker process), and
        its ``read`` count (records read from a stream, known only as they are read)."""
        self.count_read(int((batch or {}).get("read", 0)))
        for sample_id, reason, detail in (batch or {}).get("skipped", []):
            self.skip(reason, detail, sample_id=sample_id)

    def summary(self) -> str:
        """One line, e.g. ``data: read 12, used 9, skipped 3 (corrupt_image 2, empty_answer 1)``.

        ``used`` is claimed only when every record was checked before training (or no check ran:
        streams and eagerly loaded sets, whose records are all converted as they are read); after
        a sampled check it says how many records were not checked."""
        total = sum(self.skipped.values())
        parts = f" ({', '.join(f'{k} {v}' for k, v in sorted(self.skipped.items()))})" if total else ""
        if self.checked is None:
            return f"data: read {self.read}, used {self.used}, skipped {total}{parts}"
        if self.checked >= self.read:
            return f"data: read {self.read}, all checked before training, used {self.used}, skipped {total}{parts}"
        return (f"data: read {self.read}, checked {self.checked} before training (a seeded sample), skipped "
                f"{total}{parts} among those and the records met in training; {self.read - self.checked} "
                f"not checked before training")

    def to_dict(self) -> dict[str, Any]:
        return {
            "read": self.read,
            "checked_before_training": self.checked,
            "used": self.used,
            "skipped": dict(sorted(self.skipped.items())),
            "examples": {k: list(v) for k, v in sorted(self.examples.items())},
        }

    def __repr__(self) -> str:
        return f"DataReport({self.summary()!r})"
