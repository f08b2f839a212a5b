"""Training runs through ``main([...])`` on tiny models: SFT, every loss, resume, bad configs."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from taid_vlm.cli import main
from taid_vlm.losses import LOSSES as REGISTRY
from taid_vlm.losses import DistillLoss, register_loss

from .conftest import read_jsonl, write_config

LOSSES = ["fkl", "rkl", "tvd", "gjsd", "skew_fkl", "skew_rkl", "akl", "ctkd", "dkd", "taid"]


def _run(tmp_path: Path, env: dict, *overrides: str, loss: str = "taid", **train) -> Path:
    cfg = write_config(tmp_path / "c.yaml", env, loss=loss, **train)
    assert main(["train", str(cfg), *overrides]) == 0
    return tmp_path / "out"


def test_sft_run_saves_student_and_logs(tmp_path, run_env):
    out = _run(tmp_path, run_env, loss="sft", max_steps=4)
    log = read_jsonl(out / "logs" / "train.jsonl")
    assert [r["step"] for r in log] == [1, 2, 3, 4]
    assert all(math.isfinite(r["loss"]) and r["tokens"] > 0 for r in log)
    assert log[0]["loss"] == pytest.approx(log[0]["lm_loss"])  # sft: the total is the LM loss
    assert (out / "final" / "model.safetensors").is_file()
    assert (out / "final" / "config.yaml").is_file() and (out / "final" / "metrics.json").is_file()
    assert (out / "checkpoints" / "checkpoint-4" / "state.json").is_file()


@pytest.mark.parametrize("loss", LOSSES)
def test_every_distillation_loss_trains(tmp_path, run_env, loss):
    out = _run(tmp_path, run_env, loss=loss, max_steps=2)
    log = read_jsonl(out / "logs" / "train.jsonl")
    assert len(log) == 2 and all(math.isfinite(r["distil_loss"]) for r in log)
    if loss == "taid":
        # t starts at t_start and the linear floor moves it up by (1 - 0.4) / 2 at the second update.
        assert log[0]["taid_t"] == pytest.approx(0.4)
        assert log[1]["taid_t"] >= 0.4 + 0.6 / 2 - 1e-9


def test_resume_after_sigkill_is_bitwise_equal(tmp_path, run_env):
    common = dict(max_steps=6, save_every=2, keep_last=3)
    (tmp_path / "ref").mkdir()
    ref = _run(tmp_path / "ref", run_env, **common)
    crash_dir = tmp_path / "crash"
    crash_dir.mkdir()
    cfg = write_config(crash_dir / "c.yaml", run_env, **common)
    env = {**os.environ, "TAID_VLM_TEST_KILL_AT_STEP": "5"}
    proc = subprocess.run([sys.executable, "-m", "taid_vlm.cli", "train", str(cfg)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert not (crash_dir / "out" / "final").exists()
    assert main(["train", str(cfg), "--resume", "auto"]) == 0
    a = load_file(str(ref / "final" / "model.safetensors"))
    b = load_file(str(crash_dir / "out" / "final" / "model.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    log_a = read_jsonl(ref / "logs" / "train.jsonl")
    log_b = read_jsonl(crash_dir / "out" / "logs" / "train.jsonl")
    assert [r["step"] for r in log_b] == [1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in log_a] == [r["loss"] for r in log_b]
    assert [r["taid_t"] for r in log_a] == [r["taid_t"] for r in log_b]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.train=/nonexistent.json", "data.train"),
        ("loss.name=nope", "loss.name"),
        ("train.mixed_precision=fp16", "train.mixed_precision"),
        ("student.family=nosuchfamily", "nosuchfamily"),
    ],
)
def test_bad_config_fails_fast_naming_the_field(tmp_path, run_env, capsys, override, message):
    cfg = write_config(tmp_path / "c.yaml", run_env)
    try:
        status = main(["train", str(cfg), override])
    except ValueError as err:  # registry errors surface as ValueError listing valid names
        assert message in str(err)
        return
    assert status == 2
    assert message in capsys.readouterr().err


def test_output_dir_of_another_run_is_refused(tmp_path, run_env, capsys):
    _run(tmp_path, run_env, loss="sft", max_steps=1)
    cfg = write_config(tmp_path / "c.yaml", run_env, loss="sft", max_steps=1)
    assert main(["train", str(cfg)]) == 2
    assert "train.output_dir" in capsys.readouterr().err


def test_loss_temperature_reaches_taid(tmp_path, run_env):
    """`loss.temperature` is given to TAID like to every loss (it was dropped before)."""
    logs = {}
    for temp in (1, 2):
        (tmp_path / str(temp)).mkdir()
        out = _run(tmp_path / str(temp), run_env, f"loss.temperature={temp}", max_steps=1)
        logs[temp] = read_jsonl(out / "logs" / "train.jsonl")[0]
    assert logs[1]["lm_loss"] == logs[2]["lm_loss"]  # same student, same batch
    assert logs[1]["distil_loss"] != pytest.approx(logs[2]["distil_loss"], rel=1e-3)


class _ToyL2(DistillLoss):
    """Half the squared L2 distance between the two distributions, with a step counter as state."""

    name = "toy_l2"

    def __init__(self, temperature: float = 1.0, scale: float = 1.0) -> None:
        super().__init__(temperature)
        self.scale, self.calls = scale, 0

    def per_token(self, student_logits, teacher_logits, labels):
        s, t = self._tempered(student_logits, teacher_logits)
        return 0.5 * self.scale * (s.softmax(-1) - t.softmax(-1)).pow(2).sum(-1)

    def on_optimizer_step(self, stats, step, total_steps):
        self.calls += 1
        return {"toy_calls": float(self.calls)}

    def loss_state(self):
        return {"calls": self.calls}

    def load_loss_state(self, state):
        self.calls = int(state.get("calls", 0))


@pytest.fixture
def toy_loss():
    register_loss(_ToyL2)
    yield _ToyL2
    REGISTRY.pop(_ToyL2.name)


def test_a_loss_defined_in_a_test_trains_through_the_cli(tmp_path, run_env, toy_loss):
    """A new loss is one class in losses/' registry: config checks, trainer, hooks and checkpoints
    take it without a change anywhere else."""
    out = _run(tmp_path, run_env, "loss.toy_l2.scale=2.0", loss="toy_l2", max_steps=3, save_every=2)
    log = read_jsonl(out / "logs" / "train.jsonl")
    assert [r["toy_calls"] for r in log] == [1.0, 2.0, 3.0]
    assert all(math.isfinite(r["distil_loss"]) and r["distil_loss"] > 0 for r in log)
    saved = torch.load(out / "checkpoints" / "checkpoint-2" / "trainer_state.pt", weights_only=True)
    assert saved["modules"]["loss"]["_extra_state"] == {"calls": 2}
    cfg = write_config(tmp_path / "bad.yaml", run_env, loss="toy_l2")
    assert main(["train", str(cfg), "loss.toy_l2.sclae=2"]) == 2  # its options are checked by name
