"""``student.peft`` pieces: config checks naming the field, LoRA scoped to the LM, the adapted LM
head as one weight matrix for the fused loss, refusals with the reason, the frozen base's weights."""

from __future__ import annotations

import pytest
import torch

from taid_vlm.adapters import build_adapter
from taid_vlm.config import ConfigError, PeftConfig, StudentConfig
from taid_vlm.models.peft_student import apply_peft, frozen_base_state, head_weight
from taid_vlm.models.tiny import tiny_composed_config, tiny_text_config


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"r": 0}, "student.peft.r"), ({"alpha": 0}, "student.peft.alpha"), ({"dropout": 1.0}, "student.peft.dropout"),
    ({"target_modules": []}, "student.peft.target_modules"), ({"quant_type": "int4"}, "student.peft.quant_type"),
    ({"modules_to_save": [""]}, "student.peft.modules_to_save"),
])
def test_bad_peft_values_name_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        PeftConfig(**kwargs)


@pytest.mark.parametrize(("student", "field"), [
    ({"config": {}, "family": "text", "peft": {"load_in_4bit": True}}, "student.peft.load_in_4bit"),
    ({"path": "x", "family": "composed", "peft": {"load_in_4bit": True}}, "student.peft.load_in_4bit"),
    ({"path": "x", "peft": {"load_in_4bit": True, "merge": True}}, "student.peft.merge"),
    ({"path": "x", "train_lm": False, "peft": {}}, "student.train_lm"),
])
def test_contradictory_student_settings_are_refused(student, field):
    from taid_vlm.config_io import _from_dict

    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        _from_dict(StudentConfig, student, "student").check("student")


def _text(tok, **peft):
    torch.manual_seed(0)
    a = build_adapter("text", config=tiny_text_config(), tokenizer=tok)
    return a, StudentConfig(family="text", config={}, peft=PeftConfig(**peft))


def test_lora_head_weight_is_what_the_layer_applies(tiny_tokenizer):
    a, cfg = _text(tiny_tokenizer, r=4, target_modules=["q_proj", "lm_head"])
    apply_peft(a, cfg)
    head = a.model.get_output_embeddings()
    torch.nn.init.normal_(head.lora_B["default"].weight)  # B starts at zero: make the delta visible
    x = torch.randn(5, head.in_features)
    w = head_weight(head)
    torch.testing.assert_close(x @ w.T, head(x), rtol=0, atol=1e-5)
    assert (w - head.get_base_layer().weight).abs().max() > 1e-3
    (x @ w.T).sum().backward()
    assert head.lora_A["default"].weight.grad is not None and head.get_base_layer().weight.grad is None


@pytest.mark.parametrize(("peft", "field"), [
    ({"target_modules": ["lm_head"], "use_dora": True}, "student.peft.use_dora"),
    ({"target_modules": ["lm_head"], "dropout": 0.1}, "student.peft.dropout"),
    ({"target_modules": ["lm_head"], "merge": True}, "student.peft.merge"),  # the tiny LM ties its head
    ({"target_modules": ["nope_proj"]}, "student.peft.target_modules"),
])
def test_what_the_fused_loss_cannot_read_is_refused(tiny_tokenizer, peft, field):
    a, cfg = _text(tiny_tokenizer, **peft)
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        apply_peft(a, cfg)


def test_vlm_lora_stays_in_the_lm_and_the_base_is_recoverable(tiny_tokenizer):
    torch.manual_seed(0)
    a = build_adapter("composed", config=tiny_composed_config("hf_siglip", "mlp"), tokenizer=tiny_tokenizer)
    before = {k: v.clone() for k, v in a.model.state_dict().items()}
    for p in a.model.vision_tower.parameters():
        p.requires_grad_(False)
    cfg = StudentConfig(family="composed", config={}, train_vision=False, peft=PeftConfig(r=2, use_dora=True))
    peft_model = apply_peft(a, cfg)
    trainable = [n for n, p in a.model.named_parameters() if p.requires_grad]
    lora = [n for n in trainable if ".lora_" in n]
    assert lora and all(n.startswith("language_model.") and "lm_head" not in n for n in lora)
    assert {n for n in trainable if ".lora_" not in n} == {
        n for n, _ in a.model.projector.named_parameters(prefix="projector") if ".modules_to_save." in n}
    assert peft_model.get_base_model() is a.model
    with torch.no_grad():  # train a step's worth: the base state must still be the original weights
        for p in a.model.parameters():
            if p.requires_grad:
                p.add_(1.0)
    base = frozen_base_state(a.model)
    assert base.keys() == before.keys() and all(torch.equal(base[k], before[k]) for k in before)


@pytest.mark.parametrize("peft", [{"r": 4}, {"r": 2, "target_modules": ["q_proj", "v_proj"], "use_dora": True},
                                  {"r": 4, "load_in_4bit": True}])
def test_plan_counts_what_peft_trains_and_a_4bit_base(tiny_tokenizer, tmp_path, peft):
    from taid_vlm.config_io import config_from_dict
    from taid_vlm.train.plan import QUANT_BYTES, model_shape, placement_memory

    a, cfg = _text(tiny_tokenizer, **{**peft, "load_in_4bit": False})
    full = sum(p.numel() for p in a.model.parameters())
    apply_peft(a, cfg)
    trained = sum(p.numel() for p in a.model.parameters() if p.requires_grad)
    a.model.save_pretrained(tmp_path / "base", state_dict=frozen_base_state(a.model))  # a path for load_in_4bit
    tiny_tokenizer.save_pretrained(tmp_path / "base")
    run = config_from_dict({"student": {"family": "text", "path": str(tmp_path / "base"), "peft": peft},
                            "loss": {"name": "sft"}, "data": {"train": "x.json"}})
    shape = model_shape(run.student)
    assert (shape.params, shape.trainable) == (full, trained)  # counted on the meta device, as peft trains
    mem = placement_memory(run, shape.__class__(0, 0, 0, 0, 0, 0, 0), shape, 1, "replicated")
    linears = sum(m.weight.numel() for n, m in a.model.named_modules()
                  if isinstance(m, torch.nn.Linear) and n.endswith(("proj", "base_layer")) and "lora" not in n)
    quantized = linears if peft.get("load_in_4bit") else 0
    assert shape.quantized == quantized
    assert mem["student_weights"] == (full - quantized + trained) * 4 + quantized * QUANT_BYTES["4bit"]
    assert mem["optimizer"] == 2 * trained * 4
