"""student.quantization: config checks, torchao QAT prepare on the right layers, the export's
quantized weights against torchao's own QAT convert, and LoRA on top of fake-quantized linears."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from taid_vlm.config import ConfigError, StudentQuantizationConfig, check_quantization_peft
from taid_vlm.config_io import config_from_dict
from taid_vlm.models.qat import base_config, prepare_student, quantize_converted
from taid_vlm.models.tiny import tiny_text_config


def _cfg(**quant) -> dict:
    return {"student": {"family": "text", "config": tiny_text_config(), "quantization": quant},
            "loss": {"name": "sft"}, "data": {"train": "x.json"}}


def test_quantization_section_parses_and_bad_values_name_the_field():
    cfg = config_from_dict(_cfg(scheme="int8_weight_only", targets=["lm", "projector"]))
    assert cfg.student.quantization == StudentQuantizationConfig("int8_weight_only", 32, ["lm", "projector"])
    assert config_from_dict({**_cfg(), "student": {"family": "text", "config": tiny_text_config()}}
                            ).student.quantization is None
    for quant, field in (({"scheme": "int4"}, "student.quantization.scheme"),
                         ({"group_size": 0}, "student.quantization.group_size"),
                         ({"targets": []}, "student.quantization.targets"),
                         ({"targets": ["vision"]}, "student.quantization.targets"),
                         ({"bits": 4}, "student.quantization.bits")):
        with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
            config_from_dict(_cfg(**quant))


def test_quantization_with_peft_accepts_merged_lora_and_refuses_the_rest():
    q = StudentQuantizationConfig()
    check_quantization_peft(q, None)
    check_quantization_peft(None, "lora", base_quantized=True)
    check_quantization_peft(q, "lora")
    check_quantization_peft(q, "LoRA", merged=True)
    for kwargs, why in (({"adapter": "lora", "base_quantized": True}, "QLoRA"),
                        ({"adapter": "ia3"}, "only LoRA"), ({"adapter": "lora", "merged": False}, "merged")):
        with pytest.raises(ConfigError, match=f"student.quantization: .*{why}"):
            check_quantization_peft(q, **kwargs)


@pytest.fixture
def text_adapter(tiny_tokenizer):
    from taid_vlm.adapters import build_adapter

    torch.manual_seed(0)
    return build_adapter("text", config={**tiny_text_config(), "tie_word_embeddings": False},
                         tokenizer=tiny_tokenizer)


def test_prepare_fake_quantizes_the_lm_linears_only_and_keeps_parameters(text_adapter):
    from torchao.quantization.qat import FakeQuantizedLinear

    model = text_adapter.model
    x = torch.randint(3, 100, (2, 12))
    ref = model(input_ids=x).logits
    keys, params = list(model.state_dict()), {n: p for n, p in model.named_parameters()}
    names = prepare_student(model, text_adapter.parts(), StudentQuantizationConfig(group_size=16))
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    assert "lm_head" not in names and set(names) == set(linears) - {"lm_head"} and len(names) == 14
    assert all(isinstance(model.get_submodule(n), FakeQuantizedLinear) for n in names)
    assert not isinstance(model.lm_head, FakeQuantizedLinear)
    # Same Parameter objects and state-dict keys: checkpoints and the optimizer see a float student.
    assert list(model.state_dict()) == keys
    assert all(p is params[n] for n, p in model.named_parameters())
    out = model(input_ids=x).logits
    assert not torch.equal(out, ref) and (out - ref).abs().max() < 0.5  # simulated int4, not a new model
    out.sum().backward()  # straight-through: gradients reach the float weights
    assert model.get_submodule(names[0]).weight.grad.abs().sum() > 0


def test_group_size_must_divide_every_target(text_adapter):
    with pytest.raises(ConfigError, match=r"student\.quantization\.group_size: 24 does not divide"):
        prepare_student(text_adapter.model, text_adapter.parts(), StudentQuantizationConfig(group_size=24))


@pytest.mark.parametrize("scheme", ["int8_dynamic_int4_weight", "int8_weight_only"])
def test_export_quantization_equals_torchao_qat_convert(text_adapter, scheme):
    from torchao.quantization import IntxUnpackedToInt8Tensor, quantize_
    from torchao.quantization.qat import QATConfig

    q = StudentQuantizationConfig(scheme=scheme, group_size=16)
    model = text_adapter.model
    prepare_student(model, text_adapter.parts(), q)
    with torch.no_grad():  # as if trained: move the weights off their init
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    x = torch.randint(3, 100, (2, 12))
    fake = model(input_ids=x).logits
    theirs_model = copy.deepcopy(model)  # torchao's own QAT convert of the trained model
    quantize_(theirs_model, QATConfig(base_config(q), step="convert"))
    ours_model = copy.deepcopy(model)  # the float export (fake quantizers dropped), then our conversion
    quantize_(ours_model, QATConfig(step="convert"))
    names = quantize_converted(ours_model, {"lm": ours_model}, q)
    w = ours_model.get_submodule(names[0]).weight
    assert isinstance(w, IntxUnpackedToInt8Tensor) and w.qdata.dtype == torch.int8
    lo, hi = (-8, 7) if scheme == "int8_dynamic_int4_weight" else (-128, 127)
    assert lo <= int(w.qdata.min()) and int(w.qdata.max()) <= hi and int(w.qdata.abs().max()) > hi // 2
    assert not isinstance(ours_model.lm_head.weight, IntxUnpackedToInt8Tensor)
    assert ours_model.config.quantization_config.modules_to_not_convert == ["lm_head"]
    with torch.no_grad():
        ours, theirs = ours_model(input_ids=x).logits, theirs_model(input_ids=x).logits
    assert torch.equal(ours, theirs)  # the export is torchao's QAT convert, number for number
    # ...and what training simulated: the real integer model matches the fake-quantized one closely.
    assert (ours - fake).abs().max() < 1e-3 * max(1.0, float(fake.abs().max()))


def test_lora_trains_on_fake_quantized_linears_and_merges(text_adapter):
    import peft
    from torchao.quantization.qat import FakeQuantizedLinear

    model = text_adapter.model
    prepare_student(model, text_adapter.parts(), StudentQuantizationConfig(group_size=16))
    pm = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    layer = pm.base_model.model.model.layers[0].self_attn.q_proj
    assert isinstance(layer.base_layer, FakeQuantizedLinear)
    x = torch.randint(3, 100, (2, 12))
    pm(input_ids=x, labels=x).loss.backward()
    assert layer.lora_A["default"].weight.grad.abs().sum() > 0 and layer.base_layer.weight.grad is None
    merged = pm.merge_and_unload()
    assert isinstance(merged.model.layers[0].self_attn.q_proj, FakeQuantizedLinear)  # still converted at the end


def test_a_run_saved_before_the_quantization_field_is_still_reused(tmp_path, tiny_tokenizer):
    """A finished demo/study run whose saved config lacks ``student.quantization`` (saved before the
    field existed) is the same run: stage_train reuses it instead of training again."""
    import json

    import yaml

    from taid_vlm.config_io import config_to_dict
    from taid_vlm.demo.run import stage_train
    from taid_vlm.run_key import reuse_key, write_key

    tiny_tokenizer.save_pretrained(tmp_path / "tok")
    (tmp_path / "train.json").write_text("[]")
    cfg = {"student": {"family": "text", "config": tiny_text_config(), "tokenizer": str(tmp_path / "tok")},
           "loss": {"name": "sft"}, "data": {"train": str(tmp_path / "train.json")},
           "train": {"output_dir": str(tmp_path / "run"), "max_steps": 1}}
    run = tmp_path / "run"
    (run / "final").mkdir(parents=True)
    (run / "final" / "metrics.json").write_text("{}")
    (run / "train_time.json").write_text(json.dumps({"seconds": 12.5}))
    saved = config_to_dict(config_from_dict(cfg))
    del saved["student"]["quantization"]
    (run / "run_config.yaml").write_text(yaml.safe_dump(saved))
    write_key(run, reuse_key(saved))  # the key as a run made before the field existed recorded it
    assert stage_train(run, cfg, "old run") == 12.5  # reused: training this would fail (no records)
