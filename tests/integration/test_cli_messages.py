"""Messages of the CLI that a new user meets first (issue 36, items 3 and 7), through ``main([...])``."""

from __future__ import annotations

import re

import pytest

from taid_vlm.cli import main

from .conftest import write_config


def test_bare_train_asks_for_the_config_only(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "required: config" in err and "overrides" not in err.splitlines()[-1]


def test_loss_name_typo_gets_a_did_you_mean(tmp_path, run_env, capsys):
    cfg = write_config(tmp_path / "c.yaml", run_env)
    assert main(["train", str(cfg), "loss.name=taidd"]) == 2
    assert "unknown loss 'taidd'; did you mean 'taid'?" in capsys.readouterr().err


def test_taid_option_list_explains_t(tmp_path, run_env, capsys):
    cfg = write_config(tmp_path / "c.yaml", run_env)
    assert main(["train", str(cfg), "loss.taid.tstart=0.3"]) == 2
    err = capsys.readouterr().err
    assert "did you mean 't_start'?" in err and "t_start=0.4" in err
    assert re.search(r"\bt=None \(start the schedule at this t instead of t_start", err)


@pytest.mark.parametrize("model", ["runs/nope/final", "nope"])
def test_eval_of_a_missing_model_says_no_such_folder(tmp_path, run_env, capsys, monkeypatch, model):
    monkeypatch.chdir(tmp_path)
    assert main(["eval", "--model", model, "--task", "vqa", "--data", run_env["val_vqa"]]) == 2
    err = capsys.readouterr().err
    assert f"--model: no such model folder: '{model}' does not exist" in err and str(tmp_path) in err
    assert "Repo id must be" not in err


def test_eval_prints_counts_as_integers_and_shows_progress(tmp_path, run_env, capsys):
    out_json = tmp_path / "r.json"
    assert main(["eval", "--model", run_env["teacher"], "--task", "text", "--data", run_env["val"],
                 "--limit", "4", "--batch-size", "2", "--output", str(out_json)]) == 0
    cap = capsys.readouterr()
    assert re.search(r"^\s+num_tokens\s+\d+$", cap.out, flags=re.M), cap.out
    assert re.search(r"^\s+num_skipped\s+\d+$", cap.out, flags=re.M)
    assert re.search(r"^\s+perplexity\s+\d+\.\d{4}$", cap.out, flags=re.M)
    assert "eval text" in cap.err and "4/4" in cap.err  # the bar over the samples


def test_plan_of_a_tiny_recipe_shows_its_parameter_count(tmp_path, run_env, capsys):
    cfg = write_config(tmp_path / "c.yaml", run_env)
    assert main(["plan", str(cfg), "--gpus", "1", "--gpu-memory", "80GB"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^student \d+\.\d+[KM] params \(\d+\.\d+[KM] trained\), teacher \d+\.\d+[KM];", out, re.M), out
    assert "0.000B" not in out


def test_readme_and_recipe_state_the_students_measured_size(tmp_path, monkeypatch):
    import shutil
    from pathlib import Path

    from taid_vlm.config_io import load_config
    from taid_vlm.train.plan import model_shape

    root = Path(__file__).resolve().parents[2]
    shutil.copytree(root / "configs", tmp_path / "configs")
    monkeypatch.chdir(tmp_path)
    assert main(["make-synthetic", "--output", "data/shapes", "--n-train", "40", "--n-val", "8"]) == 0
    teacher = model_shape(load_config("configs/tiny_vlm_teacher.yaml").student).params
    student = model_shape(load_config("configs/tiny_vlm_taid.yaml", ["loss.name=sft"]).student).params
    ratio = round(teacher / student)
    sizes = f"{student / 1e6:.2f}M vs {teacher / 1e6:.2f}M parameters"
    readme = " ".join((root / "README.md").read_text().split())
    head = (root / "configs/tiny_vlm_taid.yaml").read_text().splitlines()[0]
    assert f"about {ratio}x smaller ({sizes})" in readme
    assert f"about {ratio}x smaller ({sizes})" in head
