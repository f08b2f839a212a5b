"""Atomic checkpoints that resume a run exactly.

A checkpoint is a folder ``checkpoint-<step>`` holding the student weights (safetensors), the
optimizer/scheduler/loss state and per-rank RNG states (``torch.save`` of tensors and plain data
only, loaded with ``weights_only=True``), the loss's state (parameters and schedule, in its
state_dict), the data position and the resolved
config. It is written to a temporary folder and renamed, so a kill during a write leaves the
previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

_CKPT_RE = re.compile(r"^checkpoint-(\d+)$")


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints in ``output_dir``, oldest first (temp folders are ignored)."""
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _CKPT_RE.match(p.name))]
    return [p for _, p in sorted(found) if (p / "state.json").is_file()]


def resolve_resume(output_dir: str | Path, resume: str | None) -> Path | None:
    """``None`` -> no resume; ``"auto"`` -> latest checkpoint or None; else the given folder."""
    if not resume:
        return None
    if resume == "auto":
        ckpts = list_checkpoints(output_dir)
        return ckpts[-1] if ckpts else None
    path = Path(resume)
    if not (path / "state.json").is_file():
        raise FileNotFoundError(f"--resume {resume!r}: not a complete checkpoint (no state.json)")
    return path


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch RNG states as tensors and plain data."""
    py = random.getstate()
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *map(float, np_state[2:])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of ``rng_state``."""
    v, internal, gauss = state["python"]
    random.setstate((v, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    # Tied weights share storage; safetensors refuses shared tensors, so each is saved as a copy.
    return {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}


def save_checkpoint(
    output_dir: str | Path,
    step: int,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    extra_modules: dict[str, nn.Module],
    state: dict[str, Any],
    config_yaml: str,
    is_main: bool,
    rank: int,
    keep_last: int,
    barrier: Any = None,
) -> Path:
    """Write ``checkpoint-<step>`` atomically; keep the newest ``keep_last``. Returns its path.

    ``state`` is JSON data (step, data position, counters). Every rank writes its
    RNG state; the main process writes everything else and does the rename.
    """
    root = Path(output_dir) / "checkpoints"
    final = root / f"checkpoint-{step}"
    tmp = root / f".tmp-checkpoint-{step}"
    if is_main:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    if barrier:
        barrier()
    torch.save(rng_state(), tmp / f"rng_rank{rank}.pt")
    if is_main:
        save_file(_model_state(model), str(tmp / "model.safetensors"))
        torch.save(
            {
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "modules": {k: m.state_dict() for k, m in extra_modules.items()},
            },
            tmp / "trainer_state.pt",
        )
        (tmp / "config.yaml").write_text(config_yaml)
    if barrier:
        barrier()
    if is_main:
        # state.json last: its presence marks a complete checkpoint.
        (tmp / "state.json").write_text(json.dumps(state, indent=2))
        _fsync_dir(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in list_checkpoints(output_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    if barrier:
        barrier()
    return final


def _fsync_dir(path: Path) -> None:
    for f in path.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())


def load_checkpoint(
    path: str | Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    extra_modules: dict[str, nn.Module],
    rank: int,
) -> dict[str, Any]:
    """Restore everything ``save_checkpoint`` wrote; returns the JSON ``state``."""
    path = Path(path)
    weights = load_file(str(path / "model.safetensors"))
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if unexpected or [k for k in missing if k not in weights]:
        bad = list(unexpected)[:3] + list(missing)[:3]
        raise RuntimeError(f"checkpoint {path} does not match the student model: {bad}")
    trainer_state = torch.load(path / "trainer_state.pt", weights_only=True, map_location="cpu")
    optimizer.load_state_dict(trainer_state["optimizer"])
    scheduler.load_state_dict(trainer_state["scheduler"])
    state = json.loads((path / "state.json").read_text())
    for k, m in extra_modules.items():
        saved = trainer_state["modules"][k]
        if "_extra_state" in m.state_dict() and "_extra_state" not in saved:
            # Written by 0.1.0, before a loss carried its own state: its TAID schedule sat in state.json.
            legacy = state.get("taid_schedule")
            saved = {**saved, "_extra_state": {"schedule": legacy} if legacy else {}}
        m.load_state_dict(saved)
    rng_file = path / f"rng_rank{rank}.pt"
    if rng_file.is_file():
        set_rng_state(torch.load(rng_file, weights_only=True))
    return state


# -- sharded engines (FSDP2, DeepSpeed): accelerate's save_state / load_state ----------------------
SHARDED_ENGINES = ("FSDP", "DEEPSPEED")


def save_engine_checkpoint(acc: Any, output_dir: str | Path, step: int, *, state: dict[str, Any],
                           config_yaml: str, keep_last: int) -> Path:
    """``checkpoint-<step>`` through ``accelerate.save_state`` (every rank writes its shards of the
    model and optimizer, accelerate's RNG states and the objects registered with
    ``register_for_checkpointing``: scheduler, loss); ``state.json`` last and an atomic rename, as
    ``save_checkpoint``. Collective: every rank calls it."""
    root = Path(output_dir) / "checkpoints"
    final = root / f"checkpoint-{step}"
    tmp = root / f".tmp-checkpoint-{step}"
    if acc.is_main_process:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    acc.wait_for_everyone()
    acc.save_state(str(tmp))
    acc.wait_for_everyone()
    if acc.is_main_process:
        (tmp / "config.yaml").write_text(config_yaml)
        (tmp / "state.json").write_text(json.dumps({**state, "engine": "accelerate_save_state"}, indent=2))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in list_checkpoints(output_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    acc.wait_for_everyone()
    return final


def load_engine_checkpoint(acc: Any, path: str | Path) -> dict[str, Any]:
    """Restore what ``save_engine_checkpoint`` wrote (``accelerate.load_state``); returns ``state``."""
    path = Path(path)
    state = json.loads((path / "state.json").read_text())
    if state.get("engine") != "accelerate_save_state":
        raise RuntimeError(f"checkpoint {path} was written by a single-process/DDP run (model.safetensors); "
                           "resume it under DDP, or start this FSDP/DeepSpeed run afresh")
    acc.load_state(str(path))
    return state


def save_final_student(acc: Any, student: Any, module: nn.Module, final: str | Path) -> None:
    """``save_pretrained`` of the whole student from a sharded engine: the full state dict is gathered
    (collective: every rank calls this) and the main process writes it with the tokenizer/processor."""
    full = acc.get_state_dict(module)  # keys of StudentForward: "model." + the student's own names
    if acc.is_main_process:
        weights = {k.removeprefix("model."): v for k, v in full.items() if k.startswith("model.")}
        student.model.save_pretrained(str(final), state_dict=weights, safe_serialization=True)
        (student.processor or student.tokenizer).save_pretrained(str(final))
    acc.wait_for_everyone()
