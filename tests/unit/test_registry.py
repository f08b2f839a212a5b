"""Family look-up: `family: auto` reads config.json; unknown names point to the closest known one."""

from __future__ import annotations

import json

import pytest

from taid_vlm.adapters import build_adapter
from taid_vlm.adapters.registry import family_for_model_type


def test_unknown_names_point_to_the_closest_known():
    with pytest.raises(ValueError, match=r"unknown adapter family 'qwen2vl' \(closest known: 'qwen2_vl'\)"):
        build_adapter("qwen2vl", config={})
    with pytest.raises(ValueError, match=r"model_type 'llava_next_video' \(closest known: 'llava_next'\)"):
        family_for_model_type("llava_next_video")
    with pytest.raises(ValueError, match=r"model_type 'zzz'; known model types"):
        family_for_model_type("zzz")


def test_auto_on_a_checkpoint_of_an_unsupported_family_names_the_closest_and_the_valid_ones(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llava_next_video"}))
    with pytest.raises(ValueError, match=r"'llava_next_video' \(closest known: 'llava_next'\)") as err:
        build_adapter("auto", path=str(tmp_path))
    valid = str(err.value).split("Set `family:` explicitly to one of ")[1]
    assert {"llava", "llava_next", "llava_onevision", "qwen2_vl", "composed"} <= set(valid.split(", "))


@pytest.mark.parametrize("model_type, family", [("qwen3_vl", "qwen3_vl"), ("smolvlm", "idefics3"),
                                                ("llava", "llava"), ("taid_vlm", "composed"), ("qwen2", "text"),
                                                ("llava_next", "llava_next"), ("llava_onevision", "llava_onevision"),
                                                ("mistral3", "mistral3")])
def test_auto_maps_config_model_type_to_its_family(model_type, family, tmp_path):
    assert family_for_model_type(model_type) == family
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt_neo_x_unknown"}))
    with pytest.raises(ValueError, match="gpt_neo_x_unknown"):
        build_adapter("auto", path=str(tmp_path))
