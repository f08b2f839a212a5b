"""Two CPU processes under ``accelerate launch``: same t on every rank, same curve as one process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from taid_vlm.cli import main

from .conftest import read_jsonl, write_config

QAT = ["student.quantization.scheme=int8_dynamic_int4_weight", "student.quantization.group_size=16"]


@pytest.mark.slow
@pytest.mark.parametrize("extra", [[], QAT], ids=["float", "qat"])
def test_two_process_run_matches_single_process(tmp_path, run_env, extra):
    # With a tracker, as the README's DDP command runs: accelerate's end_training destroys the
    # process group, and a barrier after it made the run exit 1 once the student was saved.
    extra = [*extra, "logging.report_to=[tensorboard]"]
    launcher = shutil.which("accelerate", path=os.path.dirname(sys.executable))
    assert launcher, "accelerate's launcher is installed with the package"
    # Global batch 4 in both: one process x 4, or two processes x 2.
    (tmp_path / "single").mkdir()
    single = write_config(tmp_path / "single" / "c.yaml", run_env, max_steps=3, batch_size=4)
    assert main(["train", str(single), *extra]) == 0
    (tmp_path / "ddp").mkdir()
    ddp = write_config(tmp_path / "ddp" / "c.yaml", run_env, max_steps=3, batch_size=2)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [launcher, "launch", "--multi_gpu", "--num_processes", "2", "--main_process_port", "29517",
         "-m", "taid_vlm.cli", "train", str(ddp), *extra],
        env=env, capture_output=True, text=True, timeout=420,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "ddp" / "out" / "final" / "model.safetensors").is_file()
    assert list((tmp_path / "ddp" / "out").rglob("events.out.tfevents.*"))
    a = read_jsonl(tmp_path / "single" / "out" / "logs" / "train.jsonl")
    b = read_jsonl(tmp_path / "ddp" / "out" / "logs" / "train.jsonl")
    assert [r["step"] for r in b] == [1, 2, 3]
    assert all(r["loss_state_spread"] == 0.0 for r in b)  # every rank holds the same t
    for ra, rb in zip(a, b):
        assert rb["tokens"] == ra["tokens"]
        assert rb["loss"] == pytest.approx(ra["loss"], rel=1e-4)
        assert rb["taid_t"] == pytest.approx(ra["taid_t"], rel=1e-6)


@pytest.mark.slow
def test_two_processes_stop_early_together_on_a_main_process_metric(tmp_path, run_env):
    """Generation metrics exist on the main process only; the stop decision is broadcast, so both
    ranks stop at the same step (a rank that went on would hang in its next collective)."""
    from taid_vlm.train.early_stop import EarlyStopping

    launcher = shutil.which("accelerate", path=os.path.dirname(sys.executable))
    cfg = write_config(tmp_path / "c.yaml", run_env, loss="sft", max_steps=8, batch_size=2, lr=1e-2)
    watch = ["eval.metric=eval_vqa_exact_match", "eval.every=1", "eval.patience=2", "eval.keep_best=true",
             f"eval.vqa={run_env['val_vqa']}", "eval.max_samples=4", "eval.max_new_tokens=2"]
    proc = subprocess.run(
        [launcher, "launch", "--multi_gpu", "--num_processes", "2", "--main_process_port", "29519",
         "-m", "taid_vlm.cli", "train", str(cfg), *watch],
        env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=420,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = read_jsonl(tmp_path / "out" / "logs" / "train.jsonl")
    evals = [(r["step"], r["eval_vqa_exact_match"]) for r in log if "eval_vqa_exact_match" in r]
    replay = EarlyStopping(higher_is_better=True, patience=2)
    stop = next((s for s, v in evals if (replay.update(v, s), replay.stopped)[1]), 8)
    assert max(r["step"] for r in log) == stop < 8
    metrics = json.loads((tmp_path / "out" / "final" / "metrics.json").read_text())["metrics"]
    assert metrics["stopped_early"] == 1.0 and metrics["best_step"] == replay.best_step
