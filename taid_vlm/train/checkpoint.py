"""Atomic checkpoints that resume a run exactly.

A checkpoint is a folder ``checkpoint-<step>`` holding the student weights (safetensors), the
optimizer/scheduler/loss state and per-rank RNG states (``torch.save`` of tensors and plain data
only, loaded with ``weights_only=True``), the loss's state (parameters and schedule, in its
state_dict), the data position and the resolved
config. It is written to a temporary folder and renamed, so a kill during a write leaves the
previous checkpoint intact. Old checkpoints are renamed to a trash name before they are deleted,
so a kill during clean-up never leaves a half-deleted folder that still looks complete. A write
that fails (disk full, read-only folder) removes its temporary folder and raises
``StorageError`` saying what, where and how much space one checkpoint needs.
"""

from __future__ import annotations

import errno
import json
import os
import random
import re
import shutil
import signal
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from taid_vlm.config import ConfigError

_CKPT_RE = re.compile(r"^checkpoint-(\d+)$")
# Test hook: "STEP:PHASE" SIGKILLs this process inside the save of checkpoint-STEP, at PHASE (one
# of SAVE_PHASES), so the fault-injection tests can kill mid-write and mid-clean-up.
_KILL_IN_SAVE_ENV = "TAID_VLM_TEST_KILL_IN_SAVE"
SAVE_PHASES = ("rng", "weights", "trainer_state", "state_json", "rename", "cleanup")


class StorageError(OSError):
    """A checkpoint or run folder cannot be written (no space left, read-only, ...)."""


def _maybe_kill(step: int, phase: str) -> None:
    if os.environ.get(_KILL_IN_SAVE_ENV) == f"{step}:{phase}":
        os.kill(os.getpid(), signal.SIGKILL)


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
    if not path.is_dir():
        raise ConfigError(f"--resume {resume!r}: no such folder; pass a checkpoint folder "
                          "(OUTPUT_DIR/checkpoints/checkpoint-N) or 'auto'")
    if not (path / "state.json").is_file():
        raise ConfigError(f"--resume {resume!r}: not a complete checkpoint (no state.json); pass a "
                          "checkpoint folder (OUTPUT_DIR/checkpoints/checkpoint-N) or 'auto'")
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
    if not (final / "state.json").is_file():
        _write_checkpoint(root, final, tmp, step, model=model, optimizer=optimizer, scheduler=scheduler,
                          extra_modules=extra_modules, state=state, config_yaml=config_yaml, is_main=is_main,
                          rank=rank, barrier=barrier)
    # else: this step is already saved complete (a resume at the last step saves it again); the
    # run is deterministic, so the copy on disk is what this save would write.
    if is_main:
        for old in list_checkpoints(output_dir)[:-keep_last]:
            _discard(old, step)
        _remove_leftovers(root)
    if barrier:
        barrier()
    return final


def _write_checkpoint(root: Path, final: Path, tmp: Path, step: int, *, model: nn.Module, optimizer: Any,
                      scheduler: Any, extra_modules: dict[str, nn.Module], state: dict[str, Any],
                      config_yaml: str, is_main: bool, rank: int, barrier: Any) -> None:
    """Write ``tmp`` and rename it to ``final`` (state.json last), or raise ``StorageError``."""
    if is_main:
        _guard_storage(lambda: _start_tmp(root, tmp), "start", final, model, optimizer)
    if barrier:
        barrier()
    _maybe_kill(step, "rng")
    _guard_storage(lambda: torch.save(rng_state(), tmp / f"rng_rank{rank}.pt"), "write", final, model, optimizer)
    if is_main:
        def write_main() -> None:
            save_file(_model_state(model), str(tmp / "model.safetensors"))
            _maybe_kill(step, "weights")
            torch.save(
                {
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "modules": {k: m.state_dict() for k, m in extra_modules.items()},
                },
                tmp / "trainer_state.pt",
            )
            _maybe_kill(step, "trainer_state")
            (tmp / "config.yaml").write_text(config_yaml)

        _guard_storage(write_main, "write", final, model, optimizer, tmp)
    if barrier:
        barrier()
    if is_main:
        def publish() -> None:
            # state.json last: its presence marks a complete checkpoint.
            (tmp / "state.json").write_text(json.dumps(state, indent=2))
            _fsync_dir(tmp)
            _maybe_kill(step, "state_json")
            if final.exists():  # incomplete (no state.json), so not a checkpoint: replace it
                shutil.rmtree(final)
            _maybe_kill(step, "rename")
            os.replace(tmp, final)

        _guard_storage(publish, "write", final, model, optimizer, tmp)


def _remove_leftovers(root: Path) -> None:
    """Remove temporary and trash folders that killed saves and clean-ups left behind."""
    if root.is_dir():
        for leftover in root.iterdir():
            if leftover.name.startswith((".tmp-", ".trash-")):
                shutil.rmtree(leftover, ignore_errors=True)


def _start_tmp(root: Path, tmp: Path) -> None:
    """An empty temporary folder for the new checkpoint; leftovers of killed saves are removed."""
    root.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(root)
    tmp.mkdir()


def _discard(path: Path, step: int = -1) -> None:
    """Delete a checkpoint folder so that no kill can leave it half-deleted under its own name:
    first renamed (atomic) to a trash name that ``list_checkpoints`` ignores, then removed."""
    trash = path.with_name(f".trash-{path.name}")
    if trash.exists():
        shutil.rmtree(trash, ignore_errors=True)
    os.replace(path, trash)
    if os.environ.get(_KILL_IN_SAVE_ENV) == f"{step}:cleanup":
        (trash / "model.safetensors").unlink(missing_ok=True)  # the kill lands in the middle of rmtree
        _maybe_kill(step, "cleanup")
    shutil.rmtree(trash, ignore_errors=True)


def estimate_checkpoint_bytes(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> int:
    """Bytes one checkpoint takes, estimated: the weights, plus two fp32-sized Adam moments per
    trainable parameter (the optimizer state exists only after the first step), plus 1 MB."""
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    moments = 0
    if optimizer is not None:
        moments = sum(2 * q.numel() * 4 for g in optimizer.param_groups for q in g["params"])
    return weights + moments + (1 << 20)


def free_bytes(path: str | Path) -> int:
    """Free bytes on the file system holding ``path`` (its nearest existing parent)."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MB"


def check_free_space(output_dir: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None) -> None:
    """Raise ``StorageError`` before the first step if ``output_dir`` cannot hold one more checkpoint
    (estimated; a save writes the new checkpoint before it deletes the oldest)."""
    need = estimate_checkpoint_bytes(model, optimizer)
    free = free_bytes(output_dir)
    if free < need:
        raise StorageError(errno.ENOSPC, f"train.output_dir: no space left for a checkpoint in "
                           f"{str(output_dir)!r}: one needs about {_mb(need)}, {_mb(free)} free; "
                           "free some space or choose another folder")


def _guard_storage(fn: Any, what: str, final: Path, model: nn.Module, optimizer: Any, tmp: Path | None = None) -> None:
    """Run ``fn``; an ``OSError`` or a torch write failure (which on a full disk reads
    ``unexpected pos``, never "no space") becomes a ``StorageError`` saying what, where and how
    much is needed. The temporary folder is removed so the previous checkpoint stays the latest."""
    try:
        fn()
    except (OSError, RuntimeError) as err:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        where = final.parent.parent
        need = estimate_checkpoint_bytes(model, optimizer)
        free = free_bytes(where)
        code = getattr(err, "errno", None)
        if code == errno.ENOSPC or free < need:
            cause = f"no space left on the device ({_mb(free)} free, one checkpoint needs about {_mb(need)})"
        elif code in (errno.EACCES, errno.EPERM, errno.EROFS):
            cause = "the folder is not writable (read-only or no permission)"
        else:
            cause = f"{type(err).__name__}: {err}"
        previous = [p.name for p in list_checkpoints(where) if p != final]
        kept = f"the previous checkpoint {previous[-1]} is intact" if previous else "no earlier checkpoint exists"
        raise StorageError(code or errno.EIO, f"cannot {what} checkpoint {final.name} in {str(final.parent)!r}: "
                           f"{cause}; {kept}; free some space or choose another train.output_dir") from err


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
