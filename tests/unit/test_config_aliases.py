"""Command-line overrides of deprecated aliases win over the recipe's value of the new name."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from taid_vlm.config_io import load_config

ROOT = Path(__file__).resolve().parents[2]


def test_the_issue_command_tensorboard_false_overrides_the_recipes_report_to():
    # configs/tiny_vlm_teacher.yaml sets logging.report_to: [tensorboard]
    with pytest.warns(FutureWarning, match=r"applied as logging.report_to=\[\]"):
        cfg = load_config(ROOT / "configs" / "tiny_vlm_teacher.yaml", ["logging.tensorboard=false"])
    assert cfg.logging.report_to == [] and cfg.logging.tensorboard is None and cfg.logging.trackers() == []


def _recipe(tmp_path: Path, **sections) -> Path:
    base = yaml.safe_load((ROOT / "configs" / "tiny_vlm_teacher.yaml").read_text())
    base.update(sections)
    if "loss" in sections:  # a distillation loss needs a teacher: one of the same architecture
        base["teacher"] = {"family": "composed", "config": base["student"]["config"]}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(base))
    return path


def test_tensorboard_override_wins_over_the_recipes_own_alias_too(tmp_path):
    recipe = _recipe(tmp_path, logging={"tensorboard": True})
    with pytest.warns(FutureWarning, match="deprecated name"):
        cfg = load_config(recipe, ["logging.tensorboard=false"])
    assert cfg.logging.trackers() == []
    with pytest.warns(FutureWarning, match=r"applied as logging.report_to=\[tensorboard\]"):
        assert load_config(_recipe(tmp_path, logging={"report_to": []}),
                           ["logging.tensorboard=true"]).logging.trackers() == ["tensorboard"]


def test_loss_kwargs_override_wins_over_the_recipes_loss_block(tmp_path):
    recipe = _recipe(tmp_path, loss={"name": "taid", "taid": {"t_start": 0.4, "alpha": 1e-3}})
    with pytest.warns(FutureWarning, match="applied as loss.taid.t_start=0.2"):
        cfg = load_config(recipe, ["loss.kwargs.t_start=0.2"])
    assert cfg.loss.loss_options()["t_start"] == 0.2 and cfg.loss.loss_options()["alpha"] == 1e-3
    # The loss it lands in is the one the command line names, wherever that override stands.
    with pytest.warns(FutureWarning, match="applied as loss.skew_fkl.alpha=0.3"):
        cfg = load_config(recipe, ["loss.kwargs.alpha=0.3", "loss.name=skew_fkl"])
    assert cfg.loss.loss_options()["alpha"] == 0.3


def test_legacy_taid_section_override_still_wins(tmp_path):
    recipe = _recipe(tmp_path, loss={"name": "taid", "taid": {"t_start": 0.4}})
    with pytest.warns(FutureWarning, match="top-level `taid:` section is deprecated"):
        cfg = load_config(recipe, ["taid.t_start=0.3"])
    assert cfg.loss.loss_options()["t_start"] == 0.3


def test_a_recipe_setting_both_names_is_still_refused(tmp_path):
    from taid_vlm.config import ConfigError

    recipe = _recipe(tmp_path, logging={"tensorboard": False, "report_to": ["tensorboard"]})
    with pytest.raises(ConfigError, match="logging.tensorboard: deprecated alias"):
        load_config(recipe)
