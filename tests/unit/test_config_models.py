"""Unknown keys inside model architecture dicts (HF configs, the composed student's sections)."""

from __future__ import annotations

import pytest

from taid_vlm.config import ConfigError
from taid_vlm.config_io import check_hf_config_dict, check_model_dict

QWEN = {"model_type": "qwen2", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2}


@pytest.mark.parametrize(("data", "field", "hint"), [
    ({**QWEN, "num_hidden_layer": 1}, "m.num_hidden_layer", "num_hidden_layers"),
    ({**QWEN, "model_type": "qwen2x"}, "m.model_type", "qwen2"),
    ({"model_type": "llava", "text_config": {**QWEN, "rms_norm_epss": 1.0}}, "m.text_config.rms_norm_epss",
     "rms_norm_eps"),
    ({"model_type": "llava", "vision_config": {"model_type": "siglip_vision_model", "patch_sise": 4}},
     "m.vision_config.patch_sise", "patch_size"),
])
def test_unknown_hf_config_key_is_named_with_the_closest_valid_one(data, field, hint):
    with pytest.raises(ConfigError, match=f"{field}.*did you mean '{hint}"):
        check_hf_config_dict(data, "m")


def test_valid_hf_configs_and_aliases_pass():
    # rope_theta: an attribute in transformers 4, a legacy key folded into rope_parameters in 5
    check_hf_config_dict({**QWEN, "tie_word_embeddings": True, "rope_theta": 1e4, "dtype": "float32"}, "m")
    check_hf_config_dict({"model_type": "llava", "text_config": QWEN, "image_token_index": 5}, "m")
    check_hf_config_dict({"model_type": "gpt2", "n_embd": 32, "hidden_size": 32}, "m")  # attribute_map alias


@pytest.mark.parametrize(("data", "field"), [
    ({"vision": {"backend": "hf", "feature_layr": -1}}, "s.vision.feature_layr"),
    ({"projecter": {"type": "mlp"}}, "s.projecter"),
    ({"text": {"config": {**QWEN, "vocab_sise": 9}}}, "s.text.config.vocab_sise"),
    ({"vision": {"backend": "hf", "config": {"model_type": "siglip_vision_model", "hiden_size": 8}}},
     "s.vision.config.hiden_size"),
])
def test_composed_student_sections_are_checked(data, field):
    with pytest.raises(ConfigError, match=field):
        check_model_dict(data, "s", "composed")


def test_timm_vision_config_is_not_read_as_an_hf_config():
    check_model_dict({"vision": {"backend": "timm", "name": "vit_tiny", "config": {"depth": 1}}}, "s", "composed")
