"""Every shipped YAML parses: recipes into the typed Config, accelerate configs into accelerate's."""

from __future__ import annotations

from pathlib import Path

import pytest

from taid_vlm.config_io import load_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
RECIPES = sorted(p for p in CONFIGS.glob("*.yaml"))
ACCELERATE = sorted((CONFIGS / "accelerate").glob("*.yaml"))


def test_there_are_configs():
    assert len(RECIPES) >= 4 and len(ACCELERATE) >= 4


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_parses(path):
    cfg = load_config(path)
    assert cfg.train.output_dir and cfg.data.train
    if cfg.loss.needs_teacher:
        assert cfg.teacher.path or cfg.teacher.config is not None or cfg.teacher.cache


@pytest.mark.parametrize("path", ACCELERATE, ids=lambda p: p.name)
def test_accelerate_config_parses(path):
    from accelerate.commands.config.config_args import ClusterConfig

    cfg = ClusterConfig.from_yaml_file(str(path))
    assert cfg.num_processes >= 2
