"""Per-step logging to a JSONL file, accelerate's trackers (logging.report_to) and the console."""

from __future__ import annotations

import json
import math
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
        with self.path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
        if self.tensorboard:
            scalars = {k: v for k, v in clean.items() if isinstance(v, (int, float)) and v is not None}
            self.acc.log(scalars, step=step)

    def info(self, message: str) -> None:
        if self.enabled:
            tqdm.write(f"[taid-vlm] {message}")

    def truncate_after(self, step: int) -> None:
        """On resume, drop records of steps the resumed run will redo, so curves have no duplicates."""
        if not self.enabled or not self.path.is_file():
            return
        keep = [ln for ln in self.path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= step]
        self.path.write_text("".join(k + "\n" for k in keep))

    def close(self) -> None:
        if self.enabled and self.tensorboard:
            self.acc.end_training()


def read_log(path: str | Path) -> list[dict[str, Any]]:
    """All records of a ``train.jsonl``."""
    return [json.loads(ln) for ln in Path(path).read_text().splitlines() if ln.strip()]
