"""Reuse keyed by content through the study entry point (``Study.student``): a teacher rebuilt in
place, or a data file regenerated at the same path, retrains the runs made from it, and only those."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from taid_vlm.demo.studies import Study
from taid_vlm.run_key import KEY_FILE


@pytest.fixture
def probe(tmp_path, monkeypatch) -> Path:
    """A copy of the shipped teachers S and M the studies read (so one can be rebuilt in place),
    and a ``probe`` preset: the tiny one cut to 32 training images, 2 steps, 8 held-out items."""
    from taid_vlm.demo import teachers
    from taid_vlm.demo.presets import PRESETS

    root = tmp_path / "teachers"
    for name in ("S", "M"):
        shutil.copytree(teachers.SHIPPED / name, root / name)
    monkeypatch.setattr(teachers, "SHIPPED", root)
    preset = copy.deepcopy(PRESETS["tiny"])
    preset["data"].update(n_train=32, n_val=16)
    preset["student_train"].update(max_steps=2, batch_size=8, warmup_steps=0)
    preset["eval"].update(limit=8, caption_limit=4, batch_size=16)
    monkeypatch.setitem(PRESETS, "probe", preset)
    return root


def _rebuild(teacher: Path) -> None:
    """Teacher weights changed in place, as a rebuild on another machine leaves them (same files)."""
    path = str(teacher / "model.safetensors")
    with safe_open(path, framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    for k, v in tensors.items():
        if k.startswith("language_model.") and v.is_floating_point():
            tensors[k] = v + 0.05 * torch.randn_like(v)
    save_file(tensors, path, metadata=meta)


def _runs(study: Study) -> dict[str, dict]:
    return {"sft": study.student("sft", 0, None, name="sft"),
            "fkl_S": study.student("fkl", 0, study.teacher("S"), name="fkl_S"),
            "fkl_M": study.student("fkl", 0, study.teacher("M"), name="fkl_M")}


def _weights(study: Study, row: dict) -> bytes:
    return (study.run_dir(row) / "final" / "model.safetensors").read_bytes()


def test_a_teacher_rebuilt_in_place_retrains_its_students_and_no_other(probe, tmp_path, capsys):
    study = Study(tmp_path / "work", "probe")
    before = _runs(study)
    old = {name: _weights(study, row) for name, row in before.items()}
    assert all((study.run_dir(row) / KEY_FILE).is_file() for row in before.values())
    capsys.readouterr()

    _rebuild(probe / "S")
    study = Study(tmp_path / "work", "probe")
    after = _runs(study)
    out = capsys.readouterr().out
    # The students distilled from S (through its cache) train again and say why ...
    assert "teacher cache S: " in out and "was made from other inputs (teacher.path: the content of" in out
    assert "fkl_S: " in out and "training again. Changed: " in out
    line = next(x for x in out.splitlines() if "fkl_S: " in x and "training again" in x)
    assert f"teacher.path: the content of {probe / 'S'} changed" in line and "teacher.cache: the content of" in line
    assert _weights(study, after["fkl_S"]) != old["fkl_S"]
    # ... the others, whose teacher and tower are M, are reused as they were.
    assert "sft: reusing" in out and "fkl_M: reusing" in out and "teacher cache M: reusing" in out
    for name in ("sft", "fkl_M"):
        assert _weights(study, after[name]) == old[name]
        assert after[name]["train_seconds"] == before[name]["train_seconds"]
    # Results name their runs relative to the work folder (a results file names no machine's folders).
    assert [r["run"] for r in after.values()] == ["sft", "fkl_S", "fkl_M"]


def test_a_data_file_regenerated_in_place_retrains_the_runs_on_it(probe, tmp_path, capsys):
    study = Study(tmp_path / "work", "probe")
    copy_file = Path(study.paths["train"]).with_name("train_copy.json")  # beside it: same image folder
    shutil.copy(study.paths["train"], copy_file)
    on_copy = {"data": {"train": str(copy_file)}}
    study.student("sft", 0, None, name="on_train")
    first = study.student("sft", 0, None, name="on_copy", overrides=on_copy)
    records = json.loads(copy_file.read_text())
    records[0]["conversations"][1]["value"] = "an answer the old file did not have"
    copy_file.write_text(json.dumps(records))
    capsys.readouterr()

    study.student("sft", 0, None, name="on_train")
    again = study.student("sft", 0, None, name="on_copy", overrides=on_copy)
    out = capsys.readouterr().out
    assert "on_train: reusing" in out
    assert f"on_copy: {study.run_dir(first)} holds a run of another config or other inputs" in out
    assert f"data.train: the content of {copy_file} changed" in out
    assert again["train_seconds"] != first["train_seconds"]


def test_an_option_added_since_a_run_was_made_does_not_retrain_it(probe, tmp_path, capsys):
    """A run recorded before an option existed (its key lacks the field) is reused while the option
    holds its default."""
    study = Study(tmp_path / "work", "probe")
    row = study.student("sft", 0, None, name="old_run")
    key_file = study.run_dir(row) / KEY_FILE
    key = json.loads(key_file.read_text())
    del key["config"]["train"]["max_nonfinite"]  # as written by a version without the option
    key_file.write_text(json.dumps(key))
    capsys.readouterr()
    study.student("sft", 0, None, name="old_run")
    assert "old_run: reusing" in capsys.readouterr().out
    study.student("sft", 0, None, name="old_run", overrides={"train": {"max_nonfinite": 7}})
    assert "train.max_nonfinite: new setting 7" in capsys.readouterr().out
