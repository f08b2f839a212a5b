"""Early stopping and keep-best for the trainer (``eval.metric``, ``eval.patience``, ``eval.keep_best``).

The watcher's state (best value, its step, evaluations since the last improvement, whether the run
stopped) travels in every checkpoint, so a resumed run stops where the uninterrupted one would.
With ``keep_best`` the weights of each new best evaluation are written to
``<output_dir>/best/best-<step>.safetensors`` (the checkpointed module: the student, or only its
adapter); a file is deleted only once no kept checkpoint refers to it, so resuming from any kept
checkpoint finds the best weights it knew.

Written here rather than taken from transformers' ``EarlyStoppingCallback``: that callback needs
``transformers.Trainer``'s state and saves whole checkpoints to pick the best one; this loop is
accelerate's, and the state must sit in our checkpoint format.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from taid_vlm.train.checkpoint import _model_state

BEST_DIR = "best"


@dataclass
class EarlyStopping:
    """What one run has seen of its watched metric (see the module docstring)."""

    higher_is_better: bool
    patience: int = 0
    min_delta: float = 0.0
    best: float | None = None
    best_step: int | None = None
    bad_evals: int = 0
    stopped: bool = False

    def update(self, value: float, step: int) -> bool:
        """Record an evaluation's ``value`` at ``step``; returns True when it is a new best. A NaN
        never improves. Sets ``stopped`` after ``patience`` evaluations in a row without one."""
        if math.isnan(value):
            better = False
        elif self.best is None:
            better = True
        elif self.higher_is_better:
            better = value > self.best + self.min_delta
        else:
            better = value < self.best - self.min_delta
        if better:
            self.best, self.best_step, self.bad_evals = value, step, 0
        else:
            self.bad_evals += 1
            self.stopped = self.patience > 0 and self.bad_evals >= self.patience
        return better

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_step": self.best_step, "bad_evals": self.bad_evals, "stopped": self.stopped}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_step = state.get("best"), state.get("best_step")
        self.bad_evals, self.stopped = int(state.get("bad_evals", 0)), bool(state.get("stopped", False))


def best_file(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / BEST_DIR / f"best-{step}.safetensors"


def save_best(module: torch.nn.Module, output_dir: str | Path, step: int) -> Path:
    """Write ``module``'s weights as the best of ``step`` (safetensors, as a checkpoint holds them)."""
    path = best_file(output_dir, step)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(_model_state(module), str(tmp))
    tmp.replace(path)  # a crash mid-write leaves no truncated best file behind
    return path


def load_best(module: torch.nn.Module, output_dir: str | Path, step: int) -> None:
    """Load the best weights of ``step`` into ``module`` (in place).

    Raises:
        FileNotFoundError: the file is gone (names it).
    """
    path = best_file(output_dir, step)
    if not path.is_file():
        raise FileNotFoundError(f"eval.keep_best: the best weights of step {step} are missing ({path})")
    module.load_state_dict(load_file(str(path)))


def prune_best(output_dir: str | Path, keep_steps: set[int]) -> None:
    """Delete the best files of every step not in ``keep_steps``."""
    root = Path(output_dir) / BEST_DIR
    for f in root.glob("best-*.safetensors") if root.is_dir() else ():
        step = f.stem.split("-", 1)[1]
        if not step.isdigit() or int(step) not in keep_steps:
            f.unlink(missing_ok=True)


def referenced_steps(checkpoints: list[Path]) -> set[int]:
    """The best steps the given checkpoints' ``state.json`` refer to."""
    steps = set()
    for ckpt in checkpoints:
        state_file = ckpt / "state.json"
        if state_file.is_file():
            step = (json.loads(state_file.read_text()).get("early_stop") or {}).get("best_step")
            if step is not None:
                steps.add(int(step))
    return steps
