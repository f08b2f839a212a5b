"""A run that cannot learn says so (issue 36, items 1, 2 and 5), through ``main([...])``: records are
checked before any weights load; too many bad ones stop the run with reasons and fixes; a stream
of bad records stops after its first batches; a step with no token is not a trained step."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from taid_vlm.cli import main

from .conftest import read_jsonl, write_config


def _data(tmp_path: Path, env: dict, bad: int, *, how: str = "missing", total: int = 24) -> Path:
    """The run's training records with the images of the first ``bad`` replaced by bad paths."""
    recs = json.loads(Path(env["train"]).read_text())[:total]
    for r in recs[:bad]:
        r["image"] = "images/nope.png" if how == "missing" else str(Path(env["root"]) / "data" / r["image"])
    out = Path(env["root"]) / "data" / f"train_{how}_{bad}_{tmp_path.name}.json"  # beside the images
    out.write_text(json.dumps(recs))
    return out


def _config(tmp_path: Path, env: dict, data: Path, **data_opts) -> Path:
    cfg_path = write_config(tmp_path / "c.yaml", env, max_steps=2)
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["data"].update(train=str(data), val=None, **data_opts)
    cfg_path.write_text(yaml.safe_dump(cfg))
    return cfg_path


def test_no_usable_record_stops_before_any_work(tmp_path, run_env, capsys):
    cfg = _config(tmp_path, run_env, _data(tmp_path, run_env, 8, total=8))
    assert main(["train", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "data error: data.train: none of the 8 records checked" in err
    assert "missing_image 8" in err and "fix: relative image paths are looked for in data.image_root" in err
    assert not (tmp_path / "out").exists()  # stopped before the output folder was claimed


def test_path_escape_names_both_settings_before_training(tmp_path, run_env, capsys):
    cfg = _config(tmp_path, run_env, _data(tmp_path, run_env, 16, how="absolute", total=16),
                  image_root=str(tmp_path))
    assert main(["train", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "path_escape 16" in err
    assert "data.allow_absolute_paths" in err and "data.image_root" in err
    assert not (tmp_path / "out").exists()


def test_bad_share_over_the_threshold_stops(tmp_path, run_env, capsys):
    cfg = _config(tmp_path, run_env, _data(tmp_path, run_env, 6), max_bad_fraction=0.2)
    assert main(["train", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "6 of the 24 records checked" in err and "more than data.max_bad_fraction 0.2" in err


def test_counts_are_of_checked_records(tmp_path, run_env, capsys):
    # 6 of 24 records miss their image: under the default threshold, the run trains and every
    # record is counted (the old report said "used" of records it had never looked at).
    cfg = _config(tmp_path, run_env, _data(tmp_path, run_env, 6))
    assert main(["train", str(cfg)]) == 0
    report = json.loads((tmp_path / "out/final/metrics.json").read_text())["data_report"]
    assert report["read"] == 24 and report["checked_before_training"] == 24
    assert report["skipped"] == {"missing_image": 6} and report["used"] == 18
    assert "2 optimizer steps trained" in capsys.readouterr().out


def test_sampled_check_says_what_was_not_checked(tmp_path, run_env, capsys):
    cfg = _config(tmp_path, run_env, _data(tmp_path, run_env, 0), preflight_records=10)
    assert main(["train", str(cfg)]) == 0
    report = json.loads((tmp_path / "out/final/metrics.json").read_text())["data_report"]
    assert report["read"] == 24 and report["checked_before_training"] == 10
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if "data: read 24" in ln)
    assert "checked 10 before training (a seeded sample)" in line and "14 not checked before training" in line
    assert "used" not in line  # nothing claimed about records never looked at


def test_a_stream_of_bad_records_stops_after_its_first_batches(tmp_path, run_env, capsys):
    cfg = _config(tmp_path, run_env, _data(tmp_path, run_env, 24), streaming=True)
    cfg_d = yaml.safe_load(cfg.read_text())
    cfg_d["train"]["max_steps"] = 6
    cfg.write_text(yaml.safe_dump(cfg_d))
    assert main(["train", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "the first 4 optimizer steps held no usable record" in err and "missing_image" in err
    assert not (tmp_path / "out/final").exists()


def test_a_step_without_tokens_is_not_trained(tmp_path, run_env, capsys):
    # A stream read in order, batch 4: the first 4 records are bad, so step 1 holds no token.
    cfg = _config(tmp_path, run_env, _data(tmp_path, run_env, 4), streaming=True)
    cfg_d = yaml.safe_load(cfg.read_text())
    cfg_d["train"]["max_steps"] = 3
    cfg.write_text(yaml.safe_dump(cfg_d))
    assert main(["train", str(cfg)]) == 0
    log = read_jsonl(tmp_path / "out/logs/train.jsonl")
    assert log[0]["tokens"] == 0 and log[0]["trained_steps"] == 0 and log[0]["empty_steps"] == 1
    assert log[-1]["trained_steps"] == 2 and log[-1]["tokens"] > 0
    assert "2 optimizer steps trained (1 more held no usable record" in capsys.readouterr().out


def test_strict_error_starts_on_a_clean_line_after_the_bar(tmp_path, run_env, capsys):
    # A stream is not checked up front, so the strict error comes from inside the training loop.
    cfg = _config(tmp_path, run_env, _data(tmp_path, run_env, 6), streaming=True, strict=True)
    cfg_d = yaml.safe_load(cfg.read_text())
    cfg_d["logging"]["progress"] = True
    cfg.write_text(yaml.safe_dump(cfg_d))
    assert main(["train", str(cfg)]) == 2
    err = capsys.readouterr().err
    before, sep, after = err.partition("taid-vlm train: data error")
    assert sep and "train taid" in before  # the bar was drawn
    assert before.endswith("\n")  # the error starts its own line
    assert "it/s" not in after and "\r" not in after  # no bar redrawn after it


@pytest.mark.parametrize("field", ["data.train"])
def test_relative_missing_path_names_the_folder_and_the_maker(tmp_path, run_env, capsys, monkeypatch, field):
    monkeypatch.chdir(tmp_path)
    cfg = write_config(tmp_path / "c.yaml", run_env)
    assert main(["train", str(cfg), f"{field}=data/shapes/train.json"]) == 2
    err = capsys.readouterr().err
    assert f"{field}: 'data/shapes/train.json' does not exist" in err
    assert str(tmp_path) in err and "taid-vlm make-synthetic --output data/shapes" in err


def test_strict_stops_at_the_first_bad_record_before_training(tmp_path, run_env, capsys):
    cfg = _config(tmp_path, run_env, _data(tmp_path, run_env, 1), strict=True)
    assert main(["train", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "data error (data.strict=true" in err and "missing_image" in err
    assert not (tmp_path / "out").exists()  # found by the check before training, not in a batch
