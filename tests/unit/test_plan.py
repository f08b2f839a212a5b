"""`taid-vlm plan`: parameter counts from configs on the meta device and the per-device arithmetic,
checked against hand computations on tiny Qwen2 configs."""

from __future__ import annotations

import json

import pytest

from taid_vlm.cli import main
from taid_vlm.config import ConfigError
from taid_vlm.config_io import config_from_dict
from taid_vlm.train.plan import model_shape, parse_size, placement_memory

V = 1000


def _qwen2(h, inter, layers, heads, kv, tied):
    return {"model_type": "qwen2", "hidden_size": h, "intermediate_size": inter, "num_hidden_layers": layers,
            "num_attention_heads": heads, "num_key_value_heads": kv, "vocab_size": V,
            "tie_word_embeddings": tied, "max_position_embeddings": 256}


def _hand_params(h, inter, layers, heads, kv, tied):
    """Qwen2 by hand: q/k/v with bias, o without; gated MLP; two RMSNorms per layer; final norm."""
    kv_dim = kv * (h // heads)
    layer = (h * h + h) + 2 * (h * kv_dim + kv_dim) + h * h + 3 * h * inter + 2 * h
    whole = V * h + h + (0 if tied else V * h)  # embeddings, final norm, untied head: outside the layers
    return V * h + layers * layer + h + (0 if tied else V * h), whole


STUDENT = (32, 64, 2, 4, 2, True)
TEACHER = (64, 128, 3, 4, 2, False)


def _cfg(**over):
    data = {"student": {"family": "text", "config": _qwen2(*STUDENT), "dtype": "float32"},
            "teacher": {"family": "text", "config": _qwen2(*TEACHER), "dtype": "bfloat16"},
            "data": {"train": "x.json", "max_length": 64},
            "train": {"batch_size": 2}, "loss": {"chunk_size": 16}}
    for key, value in over.items():
        section, name = key.split("__")
        data[section][name] = value
    return config_from_dict(data)


def test_parameter_counts_from_configs_match_a_hand_count():
    cfg = _cfg()
    s, t = model_shape(cfg.student), model_shape(cfg.teacher)
    assert (s.params, s.whole) == _hand_params(*STUDENT)
    assert (t.params, t.whole) == _hand_params(*TEACHER)
    assert s.trainable == s.params and t.trainable == 0
    assert (t.hidden, t.layers, t.vocab, t.head) == (64, 3, V, V * 64)


def test_per_device_memory_matches_a_hand_computation():
    cfg = _cfg()
    s, t = model_shape(cfg.student), model_shape(cfg.teacher)
    ps, _ = _hand_params(*STUDENT)
    pt, wt = _hand_params(*TEACHER)
    tokens = 2 * 64  # batch_size x max_length
    common = {
        "activations": 2 * 34 * tokens * 32 * 4 / 2,  # fp32 student (a=4), 2 layers, no checkpointing
        "teacher_activations": 34 * tokens * 64 * 2 / 2,  # bf16 teacher, one layer alive
        "fused_loss": 6 * 16 * V * 4,  # six fp32 [chunk, V] buffers
    }
    rep = placement_memory(cfg, t, s, 4, "replicated")
    assert rep == pytest.approx({"teacher_weights": pt * 2, "student_weights": ps * 4 / 4, "gradients": ps * 4 / 4,
                                 "optimizer": 2 * ps * 4 / 4, **common,
                                 "total": pt * 2 + 4 * ps + sum(common.values())})
    sh = placement_memory(cfg, t, s, 4, "sharded")
    assert sh["teacher_weights"] == pytest.approx((pt - wt) * 2 / 4 + wt * 2)
    disp = placement_memory(cfg, t, s, 4, "dispatched")  # one process: student whole on device 0
    assert disp["teacher_weights"] == pytest.approx(pt * 2 / 3)
    dev0 = ps * 4 * 4 + common["activations"] + common["fused_loss"]
    assert disp["total"] == pytest.approx(max(dev0, pt * 2 / 3 + common["teacher_activations"]))
    ck = placement_memory(_cfg(student__gradient_checkpointing=True), t, s, 4, "sharded")
    assert ck["activations"] == pytest.approx(2 * 2 * tokens * 32 * 4 / 2 + 34 * tokens * 32 * 4 / 2)
    q = placement_memory(_cfg(teacher__quantization="4bit"), t, s, 4, "replicated")
    assert q["teacher_weights"] == pytest.approx((pt - V * 64) * 0.5 + V * 64 * 2)  # the head stays bf16


def test_plan_command_says_which_placement_fits(tmp_path, capsys):
    import yaml

    cfg = _cfg(student__dtype="bfloat16")  # sharded needs one dtype on both sides
    s, t = model_shape(cfg.student), model_shape(cfg.teacher)
    rep = placement_memory(cfg, t, s, 4, "replicated")["total"]
    sh = placement_memory(cfg, t, s, 4, "sharded")["total"]
    assert sh < rep
    gpu_mib = (sh + rep) / 2 / 0.9 / 2**20  # between the two: sharded fits, replicated does not
    recipe = tmp_path / "r.yaml"
    from taid_vlm.config_io import config_to_dict

    recipe.write_text(yaml.safe_dump(config_to_dict(cfg)))
    out = tmp_path / "plan.json"
    assert main(["plan", str(recipe), "--gpus", "4", "--gpu-memory", f"{gpu_mib:.3f}MiB", "--json", str(out)]) == 1
    text = capsys.readouterr().out
    assert "teacher.placement replicated: does NOT fit" in text and "placements that fit: sharded" in text
    plan = json.loads(out.read_text())
    assert plan["placements"]["sharded"]["fits"] and not plan["placements"]["replicated"]["fits"]
    assert main(["plan", str(recipe), "teacher.placement=sharded", "--gpus", "4", "--gpu-memory",
                 f"{gpu_mib:.3f}MiB"]) == 0


def test_sizes_parse():
    assert parse_size("80GB") == 80 * 2**30 and parse_size("512MiB") == 512 * 2**20
    with pytest.raises(ValueError, match="--gpu-memory"):
        parse_size("lots")


@pytest.mark.slow
@pytest.mark.parametrize(("recipe", "placement", "replicated_fits"), [
    ("taid_vlm_2b", "replicated", True),  # InternVL3-8B-hf: ~15 GiB of teacher per GPU
    ("composed_vlm_qwen2vl72b", "sharded", False),  # 147 GB of teacher per GPU when replicated
    ("taid_llm_1p5b", "sharded", False),
])
def test_shipped_recipes_fit_8x80gb_with_their_placement(capsys, recipe, placement, replicated_fits):
    assert main(["plan", f"configs/{recipe}.yaml", "--gpus", "8", "--gpu-memory", "80GB"]) == 0
    text = capsys.readouterr().out
    assert f"teacher.placement {placement}: fits" in text
    assert ("replicated" in text.split("placements that fit:")[1]) == replicated_fits


def test_hf_vlm_student_counts_only_the_parts_it_trains(tmp_path, tiny_tokenizer):
    """An HF VLM student (InternVL) with its vision tower frozen: gradients and AdamW state for the
    projector and LM only; the tower's activations only when it trains, per image of data.max_images."""
    from taid_vlm.adapters.hf_vlm import rule_parts
    from taid_vlm.adapters.vlm_families import family_rule
    from taid_vlm.models.tiny_hf import tiny_vlm
    from taid_vlm.train.plan import _acts

    model, _ = tiny_vlm("internvl", tiny_tokenizer)
    model.config.save_pretrained(tmp_path / "s")
    sizes = {k: sum(p.numel() for p in m.parameters()) for k, m in rule_parts(model, family_rule("internvl")).items()}
    total = sum(p.numel() for p in model.parameters())
    assert sum(sizes.values()) == total and min(sizes.values()) > 0

    def plan(**student):
        cfg = config_from_dict({"student": {"family": "auto", "path": str(tmp_path / "s"), **student},
                                "teacher": {"family": "auto", "path": str(tmp_path / "s")},
                                "data": {"train": "x.json", "max_length": 64, "max_images": 3}, "train": {"batch_size": 2}})
        shape = model_shape(cfg.student)
        return shape, placement_memory(cfg, model_shape(cfg.teacher), shape, 1, "replicated")

    frozen, mem_frozen = plan(train_vision=False)
    assert frozen.params == total and frozen.trainable == sizes["projector"] + sizes["lm"]
    assert plan(train_vision=False, train_lm=False)[0].trainable == sizes["projector"]
    full, mem_full = plan()
    assert full.trainable == total and full.vision_tokens == (32 // 8) ** 2 and full.vision_layers == 1
    assert mem_full["gradients"] - mem_frozen["gradients"] == sizes["vision"] * 4
    assert mem_full["activations"] - mem_frozen["activations"] == _acts(2 * 3 * 16, 32, 1, 4, False)


def test_flagship_pair_counts_as_published(capsys):
    """The shipped InternVL3 -hf configs give the checkpoints' sizes (2.09B and 7.94B), and the frozen
    tower (InternViT-300M) is all the flagship student does not train."""
    assert main(["plan", "configs/taid_vlm_2b.yaml", "--gpus", "8", "--gpu-memory", "80GB"]) == 0
    head = capsys.readouterr().out.splitlines()[0]
    assert head.startswith("student 2.089B params (1.785B trained), teacher 7.944B")


def test_a_shipped_config_is_read_before_the_hub_is_asked(monkeypatch):
    """Without a network and HF_HUB_OFFLINE unset, asking the hub costs ~45 s of retries per model:
    the plan reads local files and the cache, then the shipped copy, and asks the hub only when
    neither has the model."""
    import transformers

    from taid_vlm.train import plan

    calls = []

    def from_pretrained(name, **kw):
        calls.append(kw.get("local_files_only", False))
        raise OSError("not here")

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", from_pretrained)
    d = plan.hf_config_dict("Qwen/Qwen2-1.5B-Instruct")
    assert d["model_type"] == "qwen2" and calls == [True]
    with pytest.raises(ConfigError, match="no config.json found"):
        plan.hf_config_dict("nobody/no-such-model")
    assert calls == [True, True, False]
