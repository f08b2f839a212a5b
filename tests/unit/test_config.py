"""Typed config: YAML + dotted overrides, unknown keys and bad values name the field."""

from __future__ import annotations

import pytest
import yaml

from taid_vlm.config import ConfigError
from taid_vlm.config_io import config_from_dict, config_to_dict, load_config, parse_override
from taid_vlm.losses import get_loss

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
                                              "loss.taid.adaptive=false", "loss.gjsd.beta=0.25"])
    assert cfg.train.lr == pytest.approx(3e-4)
    assert cfg.loss.name == "fkl" and cfg.train.batch_size == 4
    assert cfg.loss.options == {"taid": {"adaptive": False}, "gjsd": {"beta": 0.25}}
    assert cfg.loss.loss_options() == {"temperature": 1.0}  # fkl has no block: the others stay unused
    assert config_to_dict(cfg)["train"]["lr"] == pytest.approx(3e-4)
    again = config_from_dict(config_to_dict(cfg))  # the resolved config (saved beside checkpoints) reloads
    assert again.loss.options == cfg.loss.options


def test_loss_options_reach_the_loss(tmp_path):
    cfg = load_config(_write(tmp_path, BASE), ["loss.temperature=2", "loss.taid.t_start=0.3"])
    loss = get_loss(cfg.loss.name, **cfg.loss.loss_options())
    assert loss.temperature == 2.0 and loss.schedule.t == pytest.approx(0.3)


def test_legacy_taid_section_and_kwargs_are_read_with_a_warning(tmp_path):
    data = {**BASE, "taid": {"t_start": 0.2, "adaptive": False}}
    with pytest.warns(FutureWarning, match=r"loss\.taid"):
        cfg = load_config(_write(tmp_path, data), [])
    assert cfg.loss.options == {"taid": {"t_start": 0.2, "adaptive": False}}
    with pytest.warns(FutureWarning, match=r"loss\.gjsd"):
        cfg = load_config(_write(tmp_path, BASE), ["loss.name=gjsd", "loss.kwargs.beta=0.5"])
    assert cfg.loss.loss_options() == {"temperature": 1.0, "beta": 0.5}


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("train.lr=0", "train.lr"),
        ("train.batch_size=0", "train.batch_size"),
        ("loss.name=kl_magic", "loss.name"),
        ("loss.distil_ratio=1.5", "loss.distil_ratio"),
        ("loss.taid.t_start=1.0", "loss.taid.t_start"),
        ("loss.taid.alpha=2", "loss.taid.alpha"),
        ("loss.taid.alhpa=0.1", "loss.taid.alhpa"),  # unknown option of a loss
        ("loss.temperature=0", "loss.temperature"),
        ("loss.nosuch.beta=1", "loss.nosuch"),
        ("loss.name=sft loss.temperature=2", "loss.temperature"),  # sft refuses a temperature
        ("loss.taid.adaptive=2", "loss.taid.adaptive"),  # option types come from the loss's signature
        ("taid.t_start=2", "loss.taid.t_start"),  # a legacy override wins over the recipe's block, and is checked
        ("train.scheduler=step", "train.scheduler"),
        ("student.dtype=float8", "student.dtype"),
        ("train.batch_size=two", "train.batch_size"),
        ("train.lrr=1", "train.lrr"),
        ("data.train=", "data.train"),
        ("loss.chunk_size=0", "loss.chunk_size"),
        ("loss.chunk_size=big", "loss.chunk_size"),
    ],
)
@pytest.mark.filterwarnings("ignore:config. the top-level")
def test_bad_values_name_the_field(tmp_path, override, field):
    data = {**BASE, "loss": {"name": "taid", "taid": {"t_start": 0.4}}}
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config(_write(tmp_path, data), override.split())


def test_unknown_loss_option_suggests_the_closest():
    with pytest.raises(ConfigError, match=r"did you mean 'alpha'"):
        config_from_dict({**BASE, "loss": {"taid": {"alhpa": 0.1}}})


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
