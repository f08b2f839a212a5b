"""Typed config: YAML + dotted overrides, unknown keys and bad values name the field."""

from __future__ import annotations

import pytest
import yaml

from taid_vlm.config import ConfigError
from taid_vlm.config_io import config_to_dict, load_config, parse_override

BASE = {
    "student": {"family": "text", "config": {"model_type": "qwen2"}},
    "teacher": {"family": "text", "config": {"model_type": "qwen2"}},
    "data": {"train": "x.json"},
}


def _write(tmp_path, data):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def test_overrides_are_typed(tmp_path):
    cfg = load_config(_write(tmp_path, BASE), ["train.lr=3e-4", "loss.name=fkl", "train.batch_size=4",
                                              "taid.adaptive=false", "loss.kwargs.beta=0.5"])
    assert cfg.train.lr == pytest.approx(3e-4)
    assert cfg.loss.name == "fkl" and cfg.train.batch_size == 4 and cfg.taid.adaptive is False
    assert cfg.loss.kwargs == {"beta": 0.5}
    assert config_to_dict(cfg)["train"]["lr"] == pytest.approx(3e-4)


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("train.lr=0", "train.lr"),
        ("train.batch_size=0", "train.batch_size"),
        ("loss.name=kl_magic", "loss.name"),
        ("loss.distil_ratio=1.5", "loss.distil_ratio"),
        ("taid.t_start=1.0", "taid.t_start"),
        ("taid.alpha=2", "taid.alpha"),
        ("train.scheduler=step", "train.scheduler"),
        ("student.dtype=float8", "student.dtype"),
        ("train.batch_size=two", "train.batch_size"),
        ("train.lrr=1", "train.lrr"),
        ("data.train=", "data.train"),
    ],
)
def test_bad_values_name_the_field(tmp_path, override, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config(_write(tmp_path, BASE), [override])


def test_teacher_needed_only_for_distillation(tmp_path):
    data = {k: v for k, v in BASE.items() if k != "teacher"}
    with pytest.raises(ConfigError, match=r"teacher\.path"):
        load_config(_write(tmp_path, data), [])
    assert load_config(_write(tmp_path, data), ["loss.name=sft"]).loss.needs_teacher is False


def test_parse_override_values():
    assert parse_override("a.b=1") == (["a", "b"], 1)
    assert parse_override("a=true") == (["a"], True)
    assert parse_override("a=null") == (["a"], None)
    assert parse_override("a=[1, 2]") == (["a"], [1, 2])
    with pytest.raises(ConfigError, match="key.sub=value"):
        parse_override("nokey")
