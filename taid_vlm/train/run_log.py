"""Per-step logging to a JSONL file, accelerate's trackers (logging.report_to) and the console."""

from __future__ import annotations

import errno
import json
import math
import os
import time
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm


class RunLogger:
    """Writes ``logs/train.jsonl`` (one JSON object per logged step) on the main process."""

    def __init__(self, output_dir: Path, accelerator: Any, cfg: Any, enabled: bool) -> None:
        self.enabled = enabled
        self.acc = accelerator
        self.tensorboard = bool(cfg.logging.trackers())  # any accelerate tracker (name kept for callers)
        self.path = Path(output_dir) / "logs" / "train.jsonl"
        self.t0 = time.time()
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def metrics(self, step: int, values: dict[str, Any]) -> None:
        """Record ``values`` at optimizer ``step``."""
        if not self.enabled or not values:
            return
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in values.items()}
        record = {"step": step, "time": round(time.time() - self.t0, 3), **clean}
        try:
            with self.path.open("a") as fh:
                fh.write(json.dumps(record) + "\n")
        except OSError as err:  # disk full or folder gone: say where, not a bare traceback
            from taid_vlm.train.checkpoint import StorageError

            raise StorageError(err.errno or errno.EIO, f"cannot append to {str(self.path)!r}: "
                               f"{err.strerror or err}; free some space, then --resume auto") from err
        if self.tensorboard:
            scalars = {k: v for k, v in clean.items() if isinstance(v, (int, float)) and v is not None}
            self.acc.log(scalars, step=step)

    def info(self, message: str) -> None:
        if self.enabled:
            tqdm.write(f"[taid-vlm] {message}")

    def truncate_after(self, step: int) -> None:
        """On resume, drop records of steps the resumed run will redo, so curves have no duplicates.

        A line that does not parse (torn by a kill in the middle of a write) is dropped too. The
        file is rewritten through a temporary file and a rename, so a kill here loses nothing.
        """
        if not self.enabled or not self.path.is_file():
            return
        keep = [ln for ln, rec in _parse_lines(self.path) if rec is not None and rec.get("step", 0) <= step]
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(k + "\n" for k in keep))
        os.replace(tmp, self.path)

    def close(self) -> None:
        """Stop the trackers: ``end_training`` on every process, as accelerate requires (it finishes
        the main process's trackers and destroys the process group, a collective step)."""
        if self.tensorboard:
            self.acc.end_training()


def _parse_lines(path: Path) -> list[tuple[str, dict[str, Any] | None]]:
    """Each non-blank line with its record, or ``None`` where it is not a JSON object."""
    out: list[tuple[str, dict[str, Any] | None]] = []
    for ln in path.read_bytes().decode("utf-8", errors="replace").splitlines():
        if not ln.strip():
            continue
        try:
            rec = json.loads(ln)
        except json.JSONDecodeError:
            rec = None
        out.append((ln, rec if isinstance(rec, dict) else None))
    return out


def read_log(path: str | Path) -> list[dict[str, Any]]:
    """All records of a ``train.jsonl``; a torn last line (a kill mid-write) is left out."""
    lines = _parse_lines(Path(path))
    if lines and lines[-1][1] is None:
        lines = lines[:-1]
    bad = [ln for ln, rec in lines if rec is None]
    if bad:
        raise ValueError(f"{path}: line {bad[0][:60]!r} is not a JSON record")
    return [rec for _, rec in lines]
