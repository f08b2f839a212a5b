"""Launcher-first precision, tracker names and teacher-placement settings: checked before weights load."""

from __future__ import annotations

import warnings

import pytest
from accelerate import Accelerator

from taid_vlm.config import ConfigError
from taid_vlm.config_io import config_from_dict
from taid_vlm.train.placement import check_placement, normalise_max_memory
from taid_vlm.train.trackers import installed_trackers

BASE = {"student": {"family": "text", "config": {"model_type": "qwen2"}}, "teacher": {"family": "text", "path": "t"},
        "data": {"train": "x.json"}}


def _cfg(**sections):
    data = {k: dict(v) for k, v in BASE.items()}
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return config_from_dict(data)


def test_precision_is_left_to_the_launcher_unless_set(monkeypatch):
    cfg = _cfg()
    assert cfg.train.mixed_precision is None
    assert _cfg(train={"mixed_precision": "bf16"}).train.mixed_precision == "bf16"
    with pytest.raises(ConfigError, match="train.mixed_precision"):
        _cfg(train={"mixed_precision": "fp8x"})


def test_report_to_names_trackers_and_refuses_missing_ones():
    assert _cfg(logging={"report_to": []}).logging.trackers() == []
    with pytest.raises(ConfigError, match=r"logging.report_to: unknown tracker 'tensorbord'"):
        _cfg(logging={"report_to": ["tensorbord"]})
    missing = [n for n in ("wandb", "mlflow", "trackio", "comet_ml") if n not in installed_trackers()]
    if missing:  # a known tracker whose package is absent names the field and the pip package
        with pytest.raises(ConfigError, match=rf"logging.report_to: tracker '{missing[0]}' is not installed.*pip install"):
            _cfg(logging={"report_to": [missing[0]]})
    if "tensorboard" in installed_trackers():
        assert _cfg(logging={"report_to": ["tensorboard"]}).logging.trackers() == ["tensorboard"]


def test_tensorboard_alias_still_reads_with_a_warning():
    with pytest.warns(FutureWarning, match="logging.report_to"):
        assert _cfg(logging={"tensorboard": False}).logging.trackers() == []
    with pytest.raises(ConfigError, match="logging.tensorboard"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _cfg(logging={"tensorboard": True, "report_to": []})


def test_placement_fields_are_checked():
    with pytest.raises(ConfigError, match="teacher.placement: must be one of"):
        _cfg(teacher={"placement": "everywhere"})
    with pytest.raises(ConfigError, match="teacher.quantization"):
        _cfg(teacher={"quantization": "3bit"})
    with pytest.raises(ConfigError, match="teacher.max_memory: only used by placement dispatched"):
        _cfg(teacher={"max_memory": {"cpu": "1GiB"}})
    # One engine, one parameter dtype: a sharded teacher must match the student.
    with pytest.raises(ConfigError, match=r"teacher.dtype: placement sharded .* student.dtype float32"):
        _cfg(teacher={"placement": "sharded", "dtype": "bfloat16"})
    with pytest.raises(ConfigError, match="teacher.dtype: quantized"):
        _cfg(teacher={"quantization": "8bit"})
    ok = _cfg(teacher={"placement": "dispatched", "max_memory": {"0": "70GiB", "cpu": "1GiB"}})
    assert normalise_max_memory(ok.teacher.max_memory) == {0: "70GiB", "cpu": "1GiB"}
    with pytest.raises(ConfigError, match="teacher.max_memory: unknown device 'gpu0'"):
        normalise_max_memory({"gpu0": "1GiB"})


def test_sharded_teacher_and_quantization_need_their_engine_here():
    acc = Accelerator(cpu=True)
    with pytest.raises(ConfigError, match="teacher.placement: sharded .* this launch uses NO on cpu"):
        check_placement(_cfg(teacher={"placement": "sharded"}).teacher, acc)
    cfg = _cfg(teacher={"quantization": "8bit", "dtype": "bfloat16"})
    with pytest.raises(ConfigError, match="teacher.quantization: 8bit"):
        check_placement(cfg.teacher, acc)  # torchao missing, or no GPU: refused either way
    check_placement(_cfg(teacher={"placement": "dispatched"}).teacher, acc)  # runs anywhere


@pytest.fixture
def fresh_accelerate_state():
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    yield
    AcceleratorState._reset_state(True)


def test_launcher_precision_applies_unless_the_recipe_sets_one(monkeypatch, tmp_path, fresh_accelerate_state):
    from accelerate.state import AcceleratorState

    from taid_vlm.train.setup import launch_summary, make_accelerator

    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")  # what `accelerate launch --mixed_precision bf16` sets
    cfg = _cfg(train={"cpu": True, "output_dir": str(tmp_path)}, logging={"report_to": []})
    acc = make_accelerator(cfg)
    summary = launch_summary(acc, cfg)
    assert summary["mixed_precision"] == "bf16" and summary["mixed_precision_from"] == "launcher"
    AcceleratorState._reset_state(True)
    cfg = _cfg(train={"cpu": True, "output_dir": str(tmp_path), "mixed_precision": "no"}, logging={"report_to": []})
    summary = launch_summary(make_accelerator(cfg), cfg)
    assert summary["mixed_precision"] == "no" and summary["mixed_precision_from"] == "recipe"
