"""The accelerate training loop: accumulate, clip, step, log, evaluate, checkpoint, resume.

It knows no loss by name: the loss object gets ``on_step_begin`` / ``on_optimizer_step`` once per
optimizer step, and its state (TAID's schedule, CTKD's temperature) travels in its state_dict.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from accelerate.utils import send_to_device
from tqdm.auto import tqdm

from taid_vlm.config import Config, ConfigError
from taid_vlm.config_io import config_to_dict
from taid_vlm.data.preflight import FIRST_BATCHES, first_batches_error
from taid_vlm.losses import NonFiniteError
from taid_vlm.train.checkpoint import (
    SHARDED_ENGINES,
    list_checkpoints,
    load_checkpoint,
    load_engine_checkpoint,
    resolve_resume,
    save_checkpoint,
    save_engine_checkpoint,
    save_final_student,
)
from taid_vlm.train.data_order import micro_batch_loader
from taid_vlm.train.early_stop import EarlyStopping, load_best, prune_best, referenced_steps, save_best
from taid_vlm.train.optim import clip_or_measure
from taid_vlm.train.run_log import RunLogger
from taid_vlm.train.setup import RunParts, build_run, launch_summary
from taid_vlm.train.step import BASE_KEYS, compute_losses, end_loss_step, stack_sums, step_keys, teacher_side

# Test hook: SIGKILL this process right after the given optimizer step (a real crash, mid-run);
# with _KILL_RANK_ENV set, only the process of that rank.
_KILL_AT_ENV = "TAID_VLM_TEST_KILL_AT_STEP"
_KILL_RANK_ENV = "TAID_VLM_TEST_KILL_RANK"


class DivergedError(RuntimeError):
    """Too many optimizer steps in a row had a non-finite loss or gradient (``train.max_nonfinite``)."""


class Trainer:
    """Runs one training job described by a ``Config`` (see ``train(cfg)``)."""

    def __init__(self, cfg: Config, resume: str | None = None) -> None:
        self.cfg = cfg
        self.parts: RunParts = build_run(cfg, resume=resume)
        self.acc = self.parts.accelerator
        self.out = Path(cfg.train.output_dir)
        self.log = RunLogger(self.out, self.acc, cfg, enabled=self.acc.is_main_process)
        self.launch = launch_summary(self.acc, cfg)
        self.log.info("launch: " + ", ".join(f"{k}={v}" for k, v in self.launch.items()))
        # Cross-tokenizer runs also sum the share of student tokens per alignment case (logged).
        aligner = getattr(self.parts.collate, "aligner", None)
        self.extra_keys: tuple[str, ...] = aligner.stat_keys if aligner is not None else ()
        self.keys = (*step_keys(self.parts.loss_fn), *self.extra_keys)  # the named sums of a step, in all-reduce order
        self.loss_logs: dict[str, float] = {}
        self.step = 0
        self.nonfinite_total = 0
        self.nonfinite_run = 0
        self.trained_steps = 0  # optimizer steps that updated the weights
        self.empty_steps = 0  # steps whose micro-batches held no response token (all records skipped)
        self.last_eval: tuple[int, dict[str, float]] = (-1, {})
        ev = cfg.eval
        self.watch = EarlyStopping(ev.higher_is_better(), ev.patience, ev.min_delta) if ev.metric else None
        if ev.keep_best and self.launch["engine"] in SHARDED_ENGINES:
            # The best weights are one file of the whole module; a sharded engine holds them in pieces.
            raise ConfigError(f"eval.keep_best: not supported under {self.launch['engine']} (sharded weights); "
                              "turn it off or train without FSDP/DeepSpeed")

    # -- one optimizer step -------------------------------------------------------------------
    def _micro_step(self, batch: dict[str, Any] | None, n_global: torch.Tensor, last: bool) -> torch.Tensor:
        """Forward + backward of one micro-batch; returns its sums in ``self.keys`` order."""
        p, acc = self.parts, self.acc
        sync = contextlib.nullcontext() if last else acc.no_sync(p.student_module)
        with sync, acc.autocast():
            if batch is None or batch.get("student") is None:
                self._zero_backward()  # nothing usable in this micro-batch
                return torch.zeros(len(self.keys), device=acc.device)
            batch = send_to_device(batch, acc.device)  # the loader yields CPU tensors
            s = p.student_module(batch["student"])
            teacher_rows, teacher_logits = teacher_side(p, s, batch)
            try:
                out = compute_losses(
                    s, teacher_rows, p.loss_fn, distil_ratio=self.cfg.loss.distil_ratio, fused=self.cfg.loss.fused,
                    chunk_size=self.cfg.loss.chunk_size, teacher_logits=teacher_logits,
                    alignment=batch.get("alignment"),
                )
            except NonFiniteError:
                # Diverged logits: this step is skipped (counted as non-finite).
                self._zero_backward(s.hidden.sum() * 0.0)
                return torch.full((len(self.keys),), float("nan"), device=acc.device)
            # Sum over tokens / tokens of the whole step; x world size because DDP averages grads.
            acc.backward(out["loss"] * acc.num_processes / n_global)
        return stack_sums(out, self.keys, acc.device)

    def _zero_backward(self, extra: torch.Tensor | float = 0.0) -> None:
        """Backward of a zero loss over every trainable parameter, so this rank still joins the DDP
        gradient sync of a micro-batch that contributes nothing."""
        params = (q for q in self.parts.student_module.parameters() if q.requires_grad)
        self.acc.backward(sum(q.sum() * 0.0 for q in params) + extra)

    def _next_micro_batches(self, it: Any) -> list:
        p, ga = self.parts, self.cfg.train.grad_accum
        raw = [next(it) for _ in range(ga)]
        if p.sampler is None:
            return raw
        return [p.collate(p.sampler(samples, self.step * ga + i)) for i, samples in enumerate(raw)]

    def _sync_loss_grads(self) -> None:
        """Average gradients of loss parameters (CTKD's temperature) over ranks: the loss module is
        not wrapped for DDP, so nothing else would keep the ranks' copies equal."""
        acc = self.acc
        if acc.num_processes == 1:
            return
        for q in self.parts.loss_fn.parameters():
            if q.grad is not None:
                q.grad = acc.reduce(q.grad, reduction="mean")

    def _optimizer_step(self, micro_batches: list) -> dict[str, float]:
        p, acc, cfg = self.parts, self.acc, self.cfg
        t0 = time.perf_counter()
        p.loss_fn.on_step_begin(self.step, p.total_steps)
        n_local = sum(int(b["num_tokens"]) if b else 0 for b in micro_batches)
        n_global = acc.reduce(torch.tensor(float(n_local), device=acc.device), reduction="sum")
        empty = float(n_global) == 0  # every rank sees the same sum: all skip the update together
        n_global = torch.clamp(n_global, min=1.0)
        sums = torch.zeros(len(self.keys), device=acc.device)
        for b in micro_batches:
            p.report.absorb(b)  # skips counted in a loader worker reach the run's report here
        for i, b in enumerate(micro_batches):
            sums += self._micro_step(b, n_global, last=i == len(micro_batches) - 1)
        means = dict(zip(self.keys, (float(x) for x in acc.reduce(sums, reduction="sum") / n_global)))
        self._sync_loss_grads()
        finite = math.isfinite(means["loss"]) and not empty
        grad_norm = float("nan")
        if finite:
            # max_grad_norm <= 0 disables clipping, not the check: the norm is still measured so that
            # a non-finite gradient is caught.
            grad_norm = clip_or_measure(acc, p.trainable_params, cfg.train.max_grad_norm)
            finite = math.isfinite(grad_norm)
        if finite:
            p.optimizer.step()
            self.nonfinite_run = 0
            self.trained_steps += 1
        elif empty:  # no response token: no update (AdamW's decay would still move the weights), not trained
            self.empty_steps += 1
        else:
            self.nonfinite_total += 1
            self.nonfinite_run += 1
        p.optimizer.zero_grad(set_to_none=True)
        p.scheduler.step()
        loss_logs = end_loss_step(p.loss_fn, means if finite else None, self.step, p.total_steps)
        self.loss_logs = loss_logs
        if loss_logs and acc.num_processes > 1:
            # Every rank must hold the same loss state (e.g. TAID's t); the spread is logged so that
            # a divergence is visible.
            vals = acc.gather(torch.tensor([list(loss_logs.values())], device=acc.device, dtype=torch.float64))
            loss_logs = {**loss_logs, "loss_state_spread": float(torch.nan_to_num(vals.amax(0) - vals.amin(0)).max())}
        dt = time.perf_counter() - t0
        return {
            **{k: means[k] for k in (*BASE_KEYS, *self.extra_keys)}, "grad_norm": grad_norm,
            "lr": p.scheduler.get_last_lr()[0], "tokens": 0.0 if empty else float(n_global),
            "tokens_per_s": 0.0 if empty else float(n_global) / dt,
            "skipped_nonfinite": self.nonfinite_total, "trained_steps": self.trained_steps,
            "empty_steps": self.empty_steps,
            **loss_logs,
            **(p.sampler.stats() if p.sampler is not None else {}),
        }

    # -- checkpoints ----------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        p = self.parts
        return {
            "step": self.step, "micro_batch": self.step * self.cfg.train.grad_accum,
            "total_steps": p.total_steps, "nonfinite_total": self.nonfinite_total,
            "trained_steps": self.trained_steps, "empty_steps": self.empty_steps,
            "data_report": p.report.to_dict() if hasattr(p.report, "to_dict") else None,
            "sampler": p.sampler.state_dict() if p.sampler is not None else None,
            # A stream's read position (map-style data needs none: the order is a function of the step).
            "data_stream": p.plan.state_dict() if hasattr(p.plan, "state_dict") else None,
            "early_stop": self.watch.state_dict() if self.watch is not None else None,
        }

    def save(self) -> Path:
        p, acc = self.parts, self.acc
        if self.launch["engine"] in SHARDED_ENGINES:  # shards on every rank: accelerate's save_state
            return save_engine_checkpoint(acc, self.out, self.step, state=self._state(), keep_last=self.cfg.train.keep_last,
                                          config_yaml=yaml.safe_dump(config_to_dict(self.cfg), sort_keys=False))
        path = save_checkpoint(
            self.out, self.step, model=self._checkpointed(), optimizer=p.optimizer,
            scheduler=p.scheduler, extra_modules={"loss": p.loss_fn}, state=self._state(),
            config_yaml=yaml.safe_dump(config_to_dict(self.cfg), sort_keys=False),
            is_main=acc.is_main_process, rank=acc.process_index, keep_last=self.cfg.train.keep_last,
            barrier=acc.wait_for_everyone,
        )
        if self.cfg.eval.keep_best and acc.is_main_process:
            # Best files no kept checkpoint (nor the run now) refers to can go.
            prune_best(self.out, referenced_steps(list_checkpoints(self.out)) | {self.watch.best_step})
        return path

    def _resume(self, path: Path) -> None:
        p = self.parts
        if self.launch["engine"] in SHARDED_ENGINES:
            state = load_engine_checkpoint(self.acc, path)
        else:
            state = self._load_plain(path)
        self.step = int(state["step"])
        self.nonfinite_total = int(state.get("nonfinite_total", 0))
        self.trained_steps = int(state.get("trained_steps", self.step))
        self.empty_steps = int(state.get("empty_steps", 0))
        if p.sampler is not None and state.get("sampler"):
            p.sampler.load_state_dict(state["sampler"])
        if hasattr(p.plan, "load_state_dict") and state.get("data_stream"):
            p.plan.load_state_dict(state["data_stream"])
        if self.watch is not None and state.get("early_stop"):
            self.watch.load_state_dict(state["early_stop"])
        self.log.truncate_after(self.step)
        self.log.info(f"resumed from {path} at step {self.step}/{p.total_steps}")

    def _checkpointed(self) -> torch.nn.Module:
        """The weights a checkpoint holds: the student, or only its adapter (student.peft)."""
        from taid_vlm.models.peft_student import checkpoint_module

        return checkpoint_module(self.parts.student, self.acc.unwrap_model(self.parts.student_module).model)

    def _load_plain(self, path: Path) -> dict[str, Any]:
        p = self.parts
        return load_checkpoint(
            path, model=self._checkpointed(), optimizer=p.optimizer,
            scheduler=p.scheduler, extra_modules={"loss": p.loss_fn}, rank=self.acc.process_index,
        )

    # -- the loop -------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Train to the end; returns the final metrics (also written to ``final/metrics.json``)."""
        p, cfg = self.parts, self.cfg
        if p.resume_from is not None:
            self._resume(p.resume_from)
        kill_at = int(os.environ.get(_KILL_AT_ENV, "0") or 0)
        ga = cfg.train.grad_accum
        loader = micro_batch_loader(p.plan, p.samples, self.step * ga, p.total_steps * ga,
                                    None if p.sampler else p.collate, cfg.data.num_workers)
        it = iter(loader)
        bar = tqdm(total=p.total_steps, initial=self.step, desc=f"train {cfg.loss.name}",
                   disable=not (cfg.logging.progress and self.acc.is_main_process), dynamic_ncols=True)
        p.student_module.train()
        try:
            last = self._loop(it, bar, kill_at)
        finally:  # an error is then printed on a clean line, with no stale bar redrawn after it
            bar.close()
        # A run stopped early was evaluated at this very step.
        results = self.last_eval[1] if self.last_eval[0] == self.step else self.evaluate()
        if self.watch is not None and not self.watch.stopped:
            self._watch(results, last_step=True)  # the last step is a candidate too
        info = self._keep_best()
        if info.pop("restored", False):
            results = self.evaluate()  # the final metrics are the shipped weights'
        final = {**last, **info, **results}
        self.save()
        self.finish(final)
        return final

    def _watch(self, results: dict[str, float], last_step: bool = False) -> None:
        """Early stopping / keep-best bookkeeping after an evaluation (``last_step``: the run's
        final one, which may be the best but stops nothing)."""
        if self.watch is None:
            return
        acc, name = self.acc, self.cfg.eval.metric
        value = torch.tensor([float(results.get(name, float("nan")))], device=acc.device, dtype=torch.float64)
        if acc.num_processes > 1:  # generation metrics exist on the main process only: all ranks decide alike
            from accelerate.utils import broadcast

            value = broadcast(value, from_process=0)
        if math.isnan(float(value)) and name not in results and acc.is_main_process:
            raise RuntimeError(f"eval.metric {name!r} was not measured; this evaluation gave {sorted(results)}")
        if self.watch.update(float(value), self.step) and self.cfg.eval.keep_best and not last_step:
            if acc.is_main_process:  # (the last step's weights are in memory: nothing to save)
                save_best(self._checkpointed(), self.out, self.step)
            acc.wait_for_everyone()
        if last_step:
            self.watch.stopped = False
        elif self.watch.stopped:
            self.log.info(f"early stop at step {self.step}: {name} did not improve by more than "
                          f"{self.cfg.eval.min_delta} in {self.watch.bad_evals} evaluations "
                          f"(best {self.watch.best:.6g} at step {self.watch.best_step})")

    def _keep_best(self) -> dict[str, float]:
        """With ``eval.keep_best``, load the best evaluation's weights back before the final
        evaluation and save; returns what the final metrics record about the watch."""
        w = self.watch
        if w is None:
            return {}
        info: dict[str, Any] = {
            "stopped_early": float(w.stopped), "best_step": float(-1 if w.best_step is None else w.best_step),
            f"best_{self.cfg.eval.metric}": float("nan") if w.best is None else w.best,
        }
        if self.cfg.eval.keep_best and w.best_step is not None and w.best_step != self.step:
            load_best(self._checkpointed(), self.out, w.best_step)
            info["restored"] = True
            self.log.info(f"keep_best: the final student is step {w.best_step}'s "
                          f"({self.cfg.eval.metric} {w.best:.6g})")
        return info

    def _loop(self, it: Any, bar: Any, kill_at: int) -> dict[str, float]:
        """Optimizer steps up to ``total_steps``; returns the last step's metrics."""
        p, cfg = self.parts, self.cfg
        last: dict[str, float] = {}
        while self.step < p.total_steps and not (self.watch is not None and self.watch.stopped):
            last = self._optimizer_step(self._next_micro_batches(it))
            self.step += 1
            bar.update(1)
            bar.set_postfix({k: f"{v:.4g}" for k, v in {"loss": last["loss"], **self.loss_logs}.items()})
            logged = self.step % cfg.logging.every == 0 or self.step == p.total_steps
            if logged:
                self.log.metrics(self.step, last)
            if self.nonfinite_run >= cfg.train.max_nonfinite:
                if not logged:
                    self.log.metrics(self.step, last)  # the step that stops the run is on record
                raise DivergedError(
                    f"{self.nonfinite_run} optimizer steps in a row had a non-finite loss or gradient "
                    f"(last at step {self.step}); lower train.lr or check the data (train.max_nonfinite)"
                )
            if self.trained_steps == 0 and self.empty_steps >= min(FIRST_BATCHES, p.total_steps):
                raise first_batches_error(p.report, self.empty_steps)
            if kill_at and self.step == kill_at and os.environ.get(_KILL_RANK_ENV, str(self.acc.process_index)) == str(
                    self.acc.process_index):
                os.kill(os.getpid(), signal.SIGKILL)
            if cfg.eval.every and self.step % cfg.eval.every == 0 and self.step < p.total_steps:
                results = self.evaluate()
                self.last_eval = (self.step, results)
                self.log.metrics(self.step, results)
                self._watch(results)
            if cfg.train.save_every and self.step % cfg.train.save_every == 0 and self.step < p.total_steps:
                self.save()
        return last

    def evaluate(self) -> dict[str, float]:
        """Validation loss (and generation metrics if configured) without touching training RNG."""
        from taid_vlm.train.evaluate import run_eval_hook

        return run_eval_hook(self)

    def finish(self, metrics: dict[str, Any]) -> None:
        """Save the final student with ``save_pretrained`` + tokenizer/processor and the data report."""
        p, acc = self.parts, self.acc
        acc.wait_for_everyone()
        final = self.out / "final"
        if self.launch["engine"] in SHARDED_ENGINES:  # gathered from the shards (collective)
            save_final_student(acc, p.student, p.student_module, final)
        if acc.is_main_process:
            if self.launch["engine"] not in SHARDED_ENGINES and self.cfg.student.peft is not None:
                from taid_vlm.models.peft_student import save_peft_student

                save_peft_student(p.student, self.cfg.student, final)
            elif self.launch["engine"] not in SHARDED_ENGINES:
                p.student.save(str(final))
            if self.cfg.student.quantization is not None:  # the float export becomes the real quantized model
                from taid_vlm.train.qat import export_quantized

                # With LoRA the merged student (final/merged, required by config) is the model that ships.
                target = final / "merged" if self.cfg.student.peft is not None else final
                quant = export_quantized(target, self.cfg.student.quantization, self.cfg.student.trust_remote_code)
                self.log.info(f"quantized student: {quant}")
            (final / "config.yaml").write_text(yaml.safe_dump(config_to_dict(self.cfg), sort_keys=False))
            report = p.report.to_dict() if hasattr(p.report, "to_dict") else {}
            (final / "metrics.json").write_text(json.dumps({"metrics": metrics, "data_report": report}, indent=2))
            if hasattr(p.report, "summary"):
                self.log.info(p.report.summary())
        acc.wait_for_everyone()
        # Last: with a tracker this is accelerate's end_training, which destroys the process group
        # (a barrier after it failed on rank 0, exit 1 after the student was saved).
        self.log.close()


def train(cfg: Config, resume: str | None = None) -> dict[str, Any]:
    """Train as configured; ``resume`` is ``None``, ``"auto"`` or a checkpoint folder."""
    if resume and resume != "auto" and resolve_resume(cfg.train.output_dir, resume) is None:
        raise ConfigError(f"--resume {resume}: no checkpoint there")
    return Trainer(cfg, resume=resume).run()
