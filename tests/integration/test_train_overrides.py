"""``taid-vlm train`` with the command lines a new user types (#30): a deprecated alias on the
command line over a recipe that sets the new name, and ``train.max_grad_norm=0``."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml
from accelerate import Accelerator

from taid_vlm.cli import main
from taid_vlm.train.setup import RUN_MARKER

from .conftest import read_jsonl, write_config

ROOT = Path(__file__).resolve().parents[2]


def test_tensorboard_false_over_the_recipes_report_to_trains(tmp_path, run_env):
    # The command: the shipped recipe sets logging.report_to: [tensorboard].
    out = tmp_path / "out"
    argv = ["train", str(ROOT / "configs" / "tiny_vlm_teacher.yaml"), "logging.tensorboard=false",
            f"student.tokenizer={run_env['tokenizer']}", f"data.train={run_env['train']}", "eval.vqa=null",
            "train.max_steps=1", "train.batch_size=2", "train.save_every=0", f"train.output_dir={out}",
            "logging.progress=false"]
    with pytest.warns(FutureWarning, match=r"applied as logging.report_to=\[\]"):
        assert main(argv) == 0
    saved = yaml.safe_load((out / RUN_MARKER).read_text())["logging"]
    assert saved["report_to"] == [] and saved["tensorboard"] is None
    assert not list(out.rglob("events.out.tfevents*"))  # no tensorboard tracker ran


def test_max_grad_norm_zero_logs_the_norm_without_a_clip_call(tmp_path, run_env, monkeypatch):
    calls = []
    real = Accelerator.clip_grad_norm_
    monkeypatch.setattr(Accelerator, "clip_grad_norm_", lambda self, *a, **k: calls.append(a) or real(self, *a, **k))
    cfg = write_config(tmp_path / "c.yaml", run_env, loss="fkl", max_steps=2, batch_size=2)
    assert main(["train", str(cfg), "train.max_grad_norm=0"]) == 0
    assert calls == []
    norms = [r["grad_norm"] for r in read_jsonl(tmp_path / "out" / "logs" / "train.jsonl")]
    assert len(norms) == 2 and all(math.isfinite(n) and n > 0 for n in norms)
