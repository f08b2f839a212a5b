"""Family look-up: `family: auto` reads config.json; unknown names point to the closest known one."""

from __future__ import annotations

import json

import pytest

from taid_vlm.adapters import build_adapter
from taid_vlm.adapters.registry import family_for_model_type


def test_unknown_names_point_to_the_closest_known():
    with pytest.raises(ValueError, match=r"unknown adapter family 'qwen2vl' \(closest known: 'qwen2_vl'\)"):
        build_adapter("qwen2vl", config={})
    with pytest.raises(ValueError, match=r"model_type 'llava_next' \(closest known: 'llava'\)"):
        family_for_model_type("llava_next")
    with pytest.raises(ValueError, match=r"model_type 'zzz'; known model types"):
        family_for_model_type("zzz")


@pytest.mark.parametrize("model_type, family", [("qwen3_vl", "qwen3_vl"), ("smolvlm", "idefics3"),
                                                ("llava", "llava"), ("taid_vlm", "composed"), ("qwen2", "text")])
def test_auto_maps_config_model_type_to_its_family(model_type, family, tmp_path):
    assert family_for_model_type(model_type) == family
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt_neo_x_unknown"}))
    with pytest.raises(ValueError, match="gpt_neo_x_unknown"):
        build_adapter("auto", path=str(tmp_path))
