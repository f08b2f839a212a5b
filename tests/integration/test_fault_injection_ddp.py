"""Fault injection in a two-process CPU DDP run (``accelerate launch --multi_gpu --num_processes 2``):
SIGKILL of one rank, and of both, after a checkpoint; ``--resume auto`` then ends with weights
bitwise equal to an uninterrupted two-process run's, and the same logged curve."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from taid_vlm.train.checkpoint import list_checkpoints

from .conftest import read_jsonl, write_config

pytestmark = [pytest.mark.fault_injection, pytest.mark.slow]

# Global batch 4 (2 per rank); the kill lands after step 3, one step past the checkpoint of step 2.
RUN = {"max_steps": 4, "save_every": 2, "keep_last": 1, "batch_size": 2}
KILL_AT = 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(cfg: Path, *extra: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    launcher = shutil.which("accelerate", path=os.path.dirname(sys.executable))
    assert launcher, "accelerate's launcher is installed with the package"
    return subprocess.run(
        [launcher, "launch", "--multi_gpu", "--num_processes", "2", "--main_process_port", str(_free_port()),
         "-m", "taid_vlm.cli", "train", str(cfg), *extra],
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}, capture_output=True, text=True, timeout=420)


def _sigkilled_ranks(stderr: str) -> set[int]:
    """The ranks torchrun's failure summary reports as ended by SIGKILL (the others it stopped with
    SIGTERM once one had died)."""
    return {int(r) for r in re.findall(r"rank\s*: (\d+) \(local_rank: \d+\)\s*\n\s*exitcode\s*: -9\b", stderr)}


def _run_dir(tmp_path: Path, name: str, run_env: dict) -> Path:
    (tmp_path / name).mkdir()
    return write_config(tmp_path / name / "c.yaml", run_env, **RUN)


def test_sigkill_of_one_rank_or_both_resumes_bitwise_equal(tmp_path, run_env):
    ref = _launch(_run_dir(tmp_path, "ref", run_env))
    assert ref.returncode == 0, ref.stderr[-3000:]
    ref_weights = load_file(str(tmp_path / "ref" / "out" / "final" / "model.safetensors"))
    ref_log = read_jsonl(tmp_path / "ref" / "out" / "logs" / "train.jsonl")
    assert [r["step"] for r in ref_log] == [1, 2, 3, 4]

    for trial, kill, victims in (("rank1", {"TAID_VLM_TEST_KILL_RANK": "1"}, {1}), ("both", {}, {0, 1})):
        cfg = _run_dir(tmp_path, trial, run_env)
        out = tmp_path / trial / "out"
        killed = _launch(cfg, env={"TAID_VLM_TEST_KILL_AT_STEP": str(KILL_AT), **kill})
        assert killed.returncode != 0, f"{trial}: the kill did not stop the run"
        # Both ranks reach the kill after the same collective; the launcher may stop the second
        # with SIGTERM first, so "both" asks only for SIGKILLed ranks among the two.
        dead = _sigkilled_ranks(killed.stderr)
        if trial == "rank1":
            assert dead == victims, f"{trial}: SIGKILLed {dead}"
        else:
            assert dead and dead <= victims, f"{trial}: SIGKILLed {dead}"
        assert not (out / "final").exists(), f"{trial}: the run finished although a rank was killed"
        assert [p.name for p in list_checkpoints(out)] == ["checkpoint-2"], trial
        resumed = _launch(cfg, "--resume", "auto")
        assert resumed.returncode == 0, f"{trial}: resume failed\n{resumed.stderr[-3000:]}"
        got = load_file(str(out / "final" / "model.safetensors"))
        assert got.keys() == ref_weights.keys()
        assert all(torch.equal(ref_weights[k], got[k]) for k in ref_weights), f"{trial}: weights differ"
        log = read_jsonl(out / "logs" / "train.jsonl")
        assert [r["step"] for r in log] == [1, 2, 3, 4], trial  # the killed step 3 logged once, by the resume
        for key in ("loss", "taid_t", "grad_norm"):
            assert [r[key] for r in log] == [r[key] for r in ref_log], f"{trial}: {key}"
