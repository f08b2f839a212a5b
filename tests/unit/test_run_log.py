"""``logs/train.jsonl`` after a kill: a torn last line is dropped, on resume and when read."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from taid_vlm.train.run_log import RunLogger, read_log


def _logger(tmp_path):
    cfg = SimpleNamespace(logging=SimpleNamespace(trackers=lambda: []))  # no accelerate tracker
    return RunLogger(tmp_path, accelerator=None, cfg=cfg, enabled=True)


def test_truncate_after_drops_later_steps_and_a_torn_line(tmp_path):
    log = _logger(tmp_path)
    for step in (1, 2, 3, 4):
        log.metrics(step, {"loss": float(step)})
    with log.path.open("a") as fh:
        fh.write('{"step": 5, "lo')
    log.truncate_after(2)
    assert [r["step"] for r in read_log(log.path)] == [1, 2]
    assert not log.path.with_name("train.jsonl.tmp").exists()


def test_read_log_skips_only_a_torn_last_line(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps({"step": 1}) + "\n" + '{"step": 2, "lo')
    assert read_log(path) == [{"step": 1}]
    path.write_text('{"step": 1, "lo\n' + json.dumps({"step": 2}) + "\n")
    with pytest.raises(ValueError, match="not a JSON record"):
        read_log(path)


def test_a_failed_log_write_is_a_storage_error_naming_the_file(tmp_path, monkeypatch):
    from taid_vlm.train.checkpoint import StorageError

    log = _logger(tmp_path)
    real_open = type(log.path).open

    def full(self, mode="r", *a, **k):
        if "a" in mode:
            raise OSError(28, "No space left on device")
        return real_open(self, mode, *a, **k)

    monkeypatch.setattr(type(log.path), "open", full)
    with pytest.raises(StorageError, match="No space left on device") as err:
        log.metrics(1, {"loss": 1.0})
    assert str(log.path) in str(err.value)
