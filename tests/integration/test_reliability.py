"""The failures of issue 17, each through ``main([...])`` on the tiny recipe: odd images and paths,
resume of runs without a checkpoint, torn log lines, config typos, storage errors, strict data,
non-finite stops and a broken teacher. Each test failed before its fix."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from taid_vlm.cli import main
from taid_vlm.train import checkpoint as ckpt_mod
from taid_vlm.train.checkpoint import list_checkpoints

from .conftest import read_jsonl, write_config


def _record(i: int, image: str | None) -> dict:
    first = "<image>\nWhat colour is it?" if image is not None else "What colour is it?"
    rec = {"id": f"r{i}", "conversations": [{"from": "human", "value": first}, {"from": "gpt", "value": "red"}]}
    if image is not None:
        rec["image"] = image
    return rec


def _data(folder: Path, sizes: list[tuple[int, int]], extra: list[dict] = ()) -> str:
    """A LLaVA file with one image of each size (w, h) plus ``extra`` records."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    recs = []
    for i, (w, h) in enumerate(sizes):
        Image.new("RGB", (w, h), (200, 30, 30)).save(folder / "images" / f"{i}.png")
        recs.append(_record(i, f"images/{i}.png"))
    path = folder / "train.json"
    path.write_text(json.dumps(recs + list(extra)))
    return str(path)


def _cfg(tmp_path: Path, env: dict, *, loss: str = "sft", **train) -> str:
    return str(write_config(tmp_path / "c.yaml", env, loss=loss, **{"max_steps": 2, "batch_size": 2, **train}))


def _report(out: Path) -> dict:
    return json.loads((out / "final" / "metrics.json").read_text())["data_report"]


def test_tiny_images_train(tmp_path, run_env):
    """1x1, 1x3 and 3x1 RGB images are valid; the image processor once read them channels-first."""
    data = _data(tmp_path / "d", [(1, 1), (1, 3), (3, 1), (32, 32)])
    cfg = _cfg(tmp_path, run_env)
    assert main(["train", cfg, f"data.train={data}", f"data.val={data}"]) == 0
    report = _report(tmp_path / "out")
    assert report["read"] == 4 and report["used"] == 4 and not report["skipped"]


def test_nul_byte_path_is_skipped_and_counted(tmp_path, run_env):
    bad = [_record(90, "images/a\x00b.png"), _record(91, "images/\x07bell.png")]
    data = _data(tmp_path / "d", [(32, 32), (32, 32)], extra=bad)
    cfg = _cfg(tmp_path, run_env)
    assert main(["train", cfg, f"data.train={data}", f"data.val={data}"]) == 0
    report = _report(tmp_path / "out")
    assert report["used"] == 2 and report["skipped"] == {"bad_path": 1, "missing_image": 1}


def test_resume_auto_without_checkpoint_starts_fresh(tmp_path, run_env):
    """A run killed before its first save leaves the folder claimed but no checkpoint."""
    cfg = _cfg(tmp_path, run_env)
    assert main(["train", cfg]) == 0
    out = tmp_path / "out"
    shutil.rmtree(out / "checkpoints")
    shutil.rmtree(out / "final")
    assert main(["train", cfg, "--resume", "auto"]) == 0
    assert [r["step"] for r in read_jsonl(out / "logs" / "train.jsonl")] == [1, 2]
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-2"]


def test_same_config_restarts_a_run_that_died_before_its_first_checkpoint(tmp_path, run_env, capsys):
    cfg = _cfg(tmp_path, run_env)
    assert main(["train", cfg]) == 0
    out = tmp_path / "out"
    shutil.rmtree(out / "checkpoints")
    shutil.rmtree(out / "final")
    assert main(["train", cfg, "train.lr=0.01"]) == 2  # another config: still refused
    assert "train.output_dir" in capsys.readouterr().err
    assert main(["train", cfg]) == 0
    assert [r["step"] for r in read_jsonl(out / "logs" / "train.jsonl")] == [1, 2]


def test_overwrite_keeps_no_stale_log_or_checkpoint(tmp_path, run_env):
    cfg = _cfg(tmp_path, run_env, max_steps=3, save_every=1, keep_last=5)
    assert main(["train", cfg]) == 0
    assert main(["train", cfg, "train.max_steps=2", "train.overwrite=true"]) == 0
    out = tmp_path / "out"
    assert [r["step"] for r in read_jsonl(out / "logs" / "train.jsonl")] == [1, 2]
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-1", "checkpoint-2"]


def test_torn_last_log_line_is_dropped_on_resume(tmp_path, run_env):
    cfg = _cfg(tmp_path, run_env, max_steps=4, save_every=2, keep_last=3)
    assert main(["train", cfg]) == 0
    out = tmp_path / "out"
    shutil.rmtree(out / "checkpoints" / "checkpoint-4")  # as if killed after step 4 was logged
    shutil.rmtree(out / "final")
    with (out / "logs" / "train.jsonl").open("a") as fh:
        fh.write('{"step": 5, "lo')  # a kill in the middle of a write
    assert main(["train", cfg, "--resume", "auto"]) == 0
    assert [r["step"] for r in read_jsonl(out / "logs" / "train.jsonl")] == [1, 2, 3, 4]


@pytest.mark.parametrize(
    ("args", "field", "hint"),
    [
        (["student.config.text.config.num_hidden_layer=1"], "student.config.text.config.num_hidden_layer",
         "num_hidden_layers"),
        (["student.config.vision.config.hiden_size=8"], "student.config.vision.config.hiden_size", "hidden_size"),
        (["student.tokenizer=/no/such/tokenizer"], "student.tokenizer", "does not exist"),
        (["student.family=nosuch"], "student.family", "composed"),
        (["--resume", "/no/such/dir"], "--resume", "no such folder"),
    ],
)
def test_config_errors_exit_2_naming_the_field_without_claiming(tmp_path, run_env, capsys, args, field, hint):
    cfg = _cfg(tmp_path, run_env)
    assert main(["train", cfg, *args]) == 2
    err = capsys.readouterr().err
    assert field in err and hint in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_read_only_output_dir_is_a_message(tmp_path, run_env, capsys, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o555)
    if os.geteuid() == 0:  # root writes anywhere: make the folder refuse writes as a read-only mount would
        real_mkdir = Path.mkdir

        def refuse(self, *a, **k):
            if out in (self, *self.parents) and self != out:
                raise PermissionError(errno.EROFS, "Read-only file system", str(self))
            return real_mkdir(self, *a, **k)

        real_write = Path.write_text
        monkeypatch.setattr(Path, "mkdir", refuse)
        monkeypatch.setattr(Path, "write_text", lambda self, *a, **k: (
            refuse(self) if out in self.parents else real_write(self, *a, **k)))
    try:
        assert main(["train", _cfg(tmp_path, run_env)]) == 2
    finally:
        out.chmod(0o755)
    err = capsys.readouterr().err
    assert "train.output_dir" in err and str(out) in err and "writ" in err


def _fill_disk_at(monkeypatch, n_ok: int, error: BaseException) -> None:
    """Let ``n_ok`` weight writes succeed, then fail the next as a full disk does (and report 1 kB free)."""
    calls = {"n": 0, "full": False}
    real_save, real_free = ckpt_mod.save_file, getattr(ckpt_mod, "free_bytes", None)

    def save(tensors, path, *a, **k):
        calls["n"] += 1
        if calls["n"] > n_ok:
            calls["full"] = True
            Path(path).write_bytes(b"\0" * 10)  # a partial file, as a full disk leaves
            raise error
        return real_save(tensors, path, *a, **k)

    monkeypatch.setattr(ckpt_mod, "save_file", save)
    monkeypatch.setattr(ckpt_mod, "free_bytes", lambda p: 1000 if calls["full"] else real_free(p), raising=False)


@pytest.mark.parametrize("error", [
    RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0"),
    OSError(errno.ENOSPC, "No space left on device"),
], ids=["torch_unexpected_pos", "enospc"])
def test_disk_full_at_save_says_so_and_keeps_previous_checkpoint(tmp_path, run_env, capsys, monkeypatch, error):
    cfg = _cfg(tmp_path, run_env, max_steps=4, save_every=2, keep_last=2)
    _fill_disk_at(monkeypatch, 1, error)
    assert main(["train", cfg]) == 2
    err = capsys.readouterr().err
    out = tmp_path / "out"
    assert "no space left" in err and str(out / "checkpoints") in err and "MB" in err
    assert "checkpoint-2 is intact" in err
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-2"]
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".tmp")]
    monkeypatch.undo()
    assert main(["train", cfg, "--resume", "auto"]) == 0
    assert [r["step"] for r in read_jsonl(out / "logs" / "train.jsonl")] == [1, 2, 3, 4]


def test_too_little_free_space_fails_before_the_first_step(tmp_path, run_env, capsys, monkeypatch):
    monkeypatch.setattr(ckpt_mod, "free_bytes", lambda p: 1000, raising=False)
    assert main(["train", _cfg(tmp_path, run_env)]) == 2
    err = capsys.readouterr().err
    assert "no space left" in err and "train.output_dir" in err and "MB" in err
    assert not (tmp_path / "out" / "run_config.yaml").exists() and not (tmp_path / "out" / "logs").exists()


def test_interrupted_cleanup_leaves_no_checkpoint_that_looks_complete(tmp_path, run_env, monkeypatch):
    """A kill while an old checkpoint is deleted: whatever is left must not pass as complete."""
    real_rmtree = shutil.rmtree

    class Killed(BaseException):
        pass

    def killed_midway(path, *a, **k):
        path = Path(path)
        if (path / "model.safetensors").exists() and not path.name.startswith(".tmp"):
            (path / "model.safetensors").unlink()  # rmtree got this far
            raise Killed
        return real_rmtree(path, *a, **k)

    monkeypatch.setattr(ckpt_mod.shutil, "rmtree", killed_midway)
    cfg = _cfg(tmp_path, run_env, max_steps=4, save_every=2, keep_last=1)
    with pytest.raises(Killed):
        main(["train", cfg])
    monkeypatch.undo()
    out = tmp_path / "out"
    found = list_checkpoints(out)
    assert [p.name for p in found] == ["checkpoint-4"]
    assert all((p / "model.safetensors").is_file() for p in found)
    assert main(["train", cfg, "--resume", "auto"]) == 0


def test_strict_data_stops_with_a_message(tmp_path, run_env, capsys):
    data = _data(tmp_path / "d", [(32, 32)], extra=[_record(9, "images/missing.png")])
    cfg = _cfg(tmp_path, run_env)
    assert main(["train", cfg, f"data.train={data}", f"data.val={data}", "data.strict=true"]) == 2
    err = capsys.readouterr().err
    assert "data.strict" in err and "missing_image" in err and "Traceback" not in err
    # Records are read lazily, so a bad image is met when its batch is built, after the run took its
    # folder; that folder holds no checkpoint, and the same config restarts it (tested above).
    assert not list((tmp_path / "out").glob("checkpoints/checkpoint-*"))


def test_step_that_trips_max_nonfinite_is_logged(tmp_path, run_env, capsys, monkeypatch):
    from taid_vlm.losses import NonFiniteError
    from taid_vlm.train import loop

    def diverged(*a, **k):
        raise NonFiniteError("non-finite student logits")

    monkeypatch.setattr(loop, "compute_losses", diverged)
    cfg = _cfg(tmp_path, run_env, loss="fkl", max_steps=6, max_nonfinite=2)
    assert main(["train", cfg, "logging.every=5"]) == 1
    assert "train.max_nonfinite" in capsys.readouterr().err
    log = read_jsonl(tmp_path / "out" / "logs" / "train.jsonl")
    assert [r["step"] for r in log] == [2] and log[0]["skipped_nonfinite"] == 2 and log[0]["loss"] is None


def test_teacher_with_nan_weights_is_refused_at_load(tmp_path, run_env, capsys):
    teacher = tmp_path / "teacher"
    shutil.copytree(run_env["teacher"], teacher)
    weights = load_file(str(teacher / "model.safetensors"))
    name = sorted(weights)[len(weights) // 2]
    weights[name] = weights[name].clone()
    weights[name].view(-1)[0] = float("nan")
    save_file(weights, str(teacher / "model.safetensors"), metadata={"format": "pt"})
    cfg = _cfg(tmp_path, run_env, loss="fkl")
    assert main(["train", cfg, f"teacher.path={teacher}"]) == 2
    err = capsys.readouterr().err
    # The tensor is named as the loaded model calls it (transformers 5 may prefix a submodule).
    assert "teacher.path" in err and "NaN" in err and name.split(".", 1)[1].split(".", 1)[1] in err
    assert not (tmp_path / "out").exists()
    assert torch.isnan(load_file(str(teacher / "model.safetensors"))[name]).any()
