"""Package losses in foreign loops (plain PyTorch, transformers.Trainer) follow ``taid-vlm train``:
same batches -> the same per-step loss and TAID t, gradient accumulation included."""

from __future__ import annotations

import pytest
import torch
import yaml

from taid_vlm.integrations import DistillTrainer, LossStepper, distill_losses, response_token_count
from tests.integration.integrations_env import (
    ACCUM,
    STEPS,
    TAID,
    fresh_optimizer,
    make_env,
    package_log,
    same_run,
    t_linear,
    write_recipe,
)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_tokenizer):
    """The recipe and the package trainer's per-step log (4 steps, 2 micro-batches each)."""
    root = tmp_path_factory.mktemp("integrations")
    env = make_env(root, tiny_tokenizer)
    recipe = write_recipe(root / "taid.yaml", env, **TAID)
    log = package_log(recipe)
    assert len(log) == STEPS and len({round(r["taid_t"], 9) for r in log}) == STEPS  # t moves every step
    assert max(r["taid_t"] - t_linear(i) for i, r in enumerate(log)) > 1e-3  # and the signal moves it
    return {"root": root, "env": env, "recipe": recipe, "log": log}


def _assert_same(got: list[dict], ref: list[dict], keys=("loss", "distil_loss", "taid_t")) -> None:
    assert len(got) == len(ref)
    for step, (g, r) in enumerate(zip(got, ref)):
        for k in keys:
            assert g[k] == pytest.approx(r[k], rel=1e-5, abs=1e-7), (step, k, g[k], r[k])


def test_plain_pytorch_loop_matches_package_trainer(reference, tmp_path):
    parts, batches = same_run(reference["recipe"], tmp_path / "run")
    opt, sched = fresh_optimizer(parts, reference["recipe"])
    params = [q for g in opt.param_groups for q in g["params"]]
    stepper = LossStepper(parts.loss_fn, total_steps=STEPS)
    logs = []
    for step in range(STEPS):
        micro = batches[step * ACCUM:(step + 1) * ACCUM]
        stepper.begin(step)
        n = sum(response_token_count(b["student"]) for b in micro)
        for b in micro:
            out = distill_losses(parts.student, parts.teacher, b["student"], parts.loss_fn, teacher_batch=b["teacher"])
            (out["loss"] / n).backward()
            stepper.accumulate(out)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad()
        sched.step()
        logs.append(stepper.end(step))
    _assert_same(logs, reference["log"])
    assert [r["tokens"] for r in logs] == [r["tokens"] for r in reference["log"]]


class _Batches(torch.utils.data.Dataset):
    """Pre-collated micro-batches, one per item (the package's order; the collator unwraps them)."""

    def __init__(self, batches: list[dict]) -> None:
        self.items = [{**b["student"], "teacher": b["teacher"]} for b in batches]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


def _hf_trainer(reference, out, parts, batches, adapters: bool = False, **args) -> DistillTrainer:
    from transformers import TrainingArguments

    opt, sched = fresh_optimizer(parts, reference["recipe"])
    student, teacher = (parts.student, parts.teacher) if adapters else (parts.student.model, parts.teacher.model)
    targs = TrainingArguments(
        output_dir=str(out), per_device_train_batch_size=1, per_device_eval_batch_size=1,
        gradient_accumulation_steps=ACCUM, max_grad_norm=1.0, logging_steps=1,
        report_to=[], use_cpu=True, train_sampling_strategy="sequential", remove_unused_columns=False,
        disable_tqdm=True, **{"save_strategy": "no", "max_steps": STEPS, **args})
    return DistillTrainer(student, teacher, loss=parts.loss_fn,
                          processing_class=parts.student.tokenizer, teacher_batch_key="teacher", args=targs,
                          train_dataset=_Batches(batches), eval_dataset=_Batches(batches[:2]),
                          data_collator=lambda xs: xs[0], optimizers=(opt, sched))


def test_hf_trainer_matches_package_trainer_and_eval_leaves_t(reference, tmp_path):
    parts, batches = same_run(reference["recipe"], tmp_path / "run")
    trainer = _hf_trainer(reference, tmp_path / "hf", parts, batches, eval_strategy="steps", eval_steps=1)
    before = parts.loss_fn.state_dict()
    metrics = trainer.evaluate()  # before training: t and the schedule's memory stay as they are
    assert parts.loss_fn.state_dict() == before and parts.loss_fn.schedule.num_updates == 0
    assert metrics["eval_loss"] > 0
    trainer.train()  # evaluates after every step too
    hist = trainer.loss_callback.history
    _assert_same(hist, reference["log"])
    assert parts.loss_fn.schedule.num_updates == STEPS  # once per optimizer step, not per micro-batch
    # Trainer's own logged loss is the same token-mean (the sums over micro-batches / the step's tokens).
    logged = [r for r in trainer.state.log_history if "loss" in r and "eval_loss" not in r]
    assert [r["step"] for r in logged] == list(range(1, STEPS + 1))
    for got, ref in zip(logged, reference["log"]):
        assert got["loss"] == pytest.approx(ref["loss"], rel=1e-5)
        assert got["taid_t"] == pytest.approx(ref["taid_t"], rel=1e-6)


def test_hf_trainer_resume_restores_t_and_continues_like_the_package(reference, tmp_path):
    from taid_vlm.integrations.hf_trainer import LOSS_STATE_FILE

    parts, batches = same_run(reference["recipe"], tmp_path / "run")
    first = _hf_trainer(reference, tmp_path / "hf", parts, batches, save_strategy="steps", save_steps=2)
    first.train()
    ckpt = tmp_path / "hf" / "checkpoint-2"
    assert (ckpt / LOSS_STATE_FILE).is_file()
    parts2, _ = same_run(reference["recipe"], tmp_path / "run2")  # a fresh student at t_start
    again = _hf_trainer(reference, tmp_path / "hf", parts2, batches)
    again.train(resume_from_checkpoint=str(ckpt))
    assert [r["step"] for r in again.loss_callback.history] == [3, 4]
    _assert_same(again.loss_callback.history, reference["log"][2:])
    # A checkpoint without the loss's state is refused, not resumed at t_start.
    (ckpt / LOSS_STATE_FILE).unlink()
    parts3, _ = same_run(reference["recipe"], tmp_path / "run3")
    with pytest.raises(FileNotFoundError, match=LOSS_STATE_FILE):
        _hf_trainer(reference, tmp_path / "hf", parts3, batches).train(resume_from_checkpoint=str(ckpt))


@pytest.mark.slow
def test_hf_trainer_under_ddp_matches_package_trainer(reference, tmp_path):
    """Two ranks x one micro-batch per step = one process x two: the same loss and t on every rank."""
    import json
    import os
    import shutil
    import subprocess
    import sys

    parts, batches = same_run(reference["recipe"], tmp_path / "run")
    parts.student.model.save_pretrained(tmp_path / "student")
    shutil.copytree(reference["env"]["tok"], tmp_path / "tok")
    shutil.copytree(reference["env"]["teacher"], tmp_path / "teacher")
    torch.save([b["student"] for b in batches], tmp_path / "batches.pt")
    launcher = shutil.which("accelerate", path=os.path.dirname(sys.executable))
    proc = subprocess.run(
        [launcher, "launch", "--multi_gpu", "--num_processes", "2", "--main_process_port", "29533",
         "-m", "tests.integration.hf_ddp_worker", str(tmp_path), str(reference["recipe"])],
        env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=420,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"history_{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0] == ranks[1]  # every rank holds the same t and step means
    _assert_same(ranks[0], reference["log"])
    assert [r["tokens"] for r in ranks[0]] == [r["tokens"] for r in reference["log"]]


@pytest.mark.slow
def test_hf_trainer_with_a_composed_vlm_student_matches_package_trainer(run_env, tmp_path):
    """Adapters in, image batches: a composed VLM student and teacher, two micro-batches per step."""
    from tests.integration.conftest import write_config

    recipe = write_config(tmp_path / "vlm.yaml", run_env, loss="taid", max_steps=3, batch_size=2, grad_accum=2,
                          warmup_steps=0, save_every=0)
    cfg = yaml.safe_load(recipe.read_text())
    cfg["loss"]["taid"] = TAID
    cfg["eval"] = {"every": 0, "max_batches": 0}
    cfg["logging"] = {"report_to": [], "progress": False, "every": 1}
    recipe.write_text(yaml.safe_dump(cfg))
    log = package_log(recipe)
    parts, batches = same_run(recipe, tmp_path / "run")
    assert "pixel_values" in batches[0]["student"]
    trainer = _hf_trainer({"recipe": recipe}, tmp_path / "hf", parts, batches, adapters=True, max_steps=3)
    trainer.train()
    _assert_same(trainer.loss_callback.history, log)
