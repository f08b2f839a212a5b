"""The composed student: backends, projectors, save/load through the Auto classes, generate, parts."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import taid_vlm  # noqa: F401  (registers the composed model with the Auto classes)
from taid_vlm.models.factory import build_composed
from taid_vlm.models.projector import pixel_shuffle
from taid_vlm.models.tiny import VISION_PRESETS, tiny_composed_config

PROMPT = "<|im_start|>user\n<image>What colour is the circle?<|im_end|>\n<|im_start|>assistant\n"


def _images(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (40 + 4 * i, 36, 3), dtype=np.uint8)) for i in range(n)]


def _build(tok, vision="hf_siglip", projector="mlp", pad=0, **kw):
    torch.manual_seed(0)
    model, proc = build_composed(tiny_composed_config(vision, projector, vocab_pad=pad, tokenizer_len=len(tok), **kw),
                                 tok)
    return model.eval(), proc


@pytest.mark.parametrize("vision", VISION_PRESETS)
@pytest.mark.parametrize("projector,tokens", [("mlp", 16), ("pixel_shuffle_mlp", 4)])
def test_each_backend_forwards_with_its_image_token_count(tiny_tokenizer, vision, projector, tokens):
    model, proc = _build(tiny_tokenizer, vision, projector, pad=5)
    assert model.config.num_image_tokens == tokens == proc.num_image_tokens
    batch = proc(text=[PROMPT + "<image>"], images=_images(2))
    n_slots = int((batch["input_ids"] == model.config.image_token_id).sum())
    assert n_slots == 2 * tokens
    assert batch["pixel_values"].shape == (2, 3, 32, 32)
    logits = model(**batch).logits
    assert logits.shape == (1, batch["input_ids"].shape[1], len(tiny_tokenizer) + 5)
    assert torch.isfinite(logits).all()
    # The images matter: other pixels give other logits at the text positions after them.
    other = model(input_ids=batch["input_ids"], pixel_values=batch["pixel_values"].flip(0)).logits
    assert not torch.allclose(logits[0, -1], other[0, -1])


def test_pixel_shuffle_groups_2x2_neighbourhoods():
    x = torch.arange(16.0).reshape(1, 16, 1)  # 4x4 grid, token value = its index
    y = pixel_shuffle(x, 2)
    assert y.shape == (1, 4, 4)
    assert y[0].tolist() == [[0, 1, 4, 5], [2, 3, 6, 7], [8, 9, 12, 13], [10, 11, 14, 15]]
    with pytest.raises(ValueError, match="square grid"):
        pixel_shuffle(torch.zeros(1, 12, 3))


@pytest.mark.parametrize("vision", VISION_PRESETS)
def test_save_then_auto_classes_give_identical_logits(tiny_tokenizer, tmp_path, vision):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model, proc = _build(tiny_tokenizer, vision, "pixel_shuffle_mlp", pad=3, feature_layer=-2)
    model.save_pretrained(tmp_path)
    proc.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "taid_vlm" and saved["vision"]["backend"] == model.config.vision["backend"]
    loaded = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    proc2 = AutoProcessor.from_pretrained(tmp_path)
    assert type(proc2).__name__ == "TaidVLMProcessor" and proc2.num_image_tokens == 4
    images = _images(1)
    a, b = proc(text=PROMPT, images=images), proc2(text=PROMPT, images=images)
    assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["pixel_values"], b["pixel_values"])
    with torch.no_grad():
        assert torch.equal(model(**a).logits, loaded(**b).logits)


def test_generate_equals_greedy_loop_over_full_forwards(tiny_tokenizer):
    model, proc = _build(tiny_tokenizer, "timm_vit", "mlp", text="llama")
    with torch.no_grad():  # larger random weights so greedy tokens vary along the sequence
        for p in model.language_model.parameters():
            if p.ndim == 2:
                p.normal_(0, 0.3)
    prompts = [PROMPT, "<|im_start|>user\nHi<image> and <image>?<|im_end|>\n<|im_start|>assistant\n"]
    images = [_images(1, seed=1), _images(2, seed=2)]
    expected = []
    for text, ims in zip(prompts, images):  # each prompt alone, no padding, no cache
        enc = proc(text=text, images=ims)
        ids = enc["input_ids"]
        for _ in range(6):
            with torch.no_grad():
                nxt = model(input_ids=ids, pixel_values=enc["pixel_values"]).logits[:, -1].argmax(-1)
            ids = torch.cat([ids, nxt[:, None]], 1)
        expected.append(ids[0, enc["input_ids"].shape[1]:].tolist())
    assert len(set(expected[0])) > 1 or len(set(expected[1])) > 1
    proc.tokenizer.padding_side = "left"
    batch = proc(text=prompts, images=images[0] + images[1], padding=True)
    proc.tokenizer.padding_side = "right"
    for use_cache in (True, False):  # images enter at prefill only / at every full re-run
        out = model.generate(**batch, max_new_tokens=6, do_sample=False, eos_token_id=None, use_cache=use_cache)
        assert out[:, batch["input_ids"].shape[1]:].tolist() == expected


def test_freezing_vision_leaves_its_grads_empty(tiny_tokenizer):
    model, proc = _build(tiny_tokenizer, "open_clip_vit", "mlp")
    parts = model.parts()
    assert set(parts) == {"vision", "projector", "lm"}
    parts["vision"].requires_grad_(False)
    batch = proc(text=PROMPT + "red<|im_end|>", images=_images(1))
    model.train()
    model(**batch, labels=batch["input_ids"]).loss.backward()
    assert all(p.grad is None for p in parts["vision"].parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in parts["projector"].parameters())
    assert parts["lm"].get_input_embeddings().weight.grad is not None


@pytest.mark.parametrize("vision", ["hf_siglip", "timm_vit"])
def test_gradient_checkpointing_keeps_gradients(tiny_tokenizer, vision):
    model, proc = _build(tiny_tokenizer, vision, "mlp")
    batch = proc(text=PROMPT + "red<|im_end|>", images=_images(1))
    model.train()

    def grads():
        model.zero_grad()
        model(**batch, labels=batch["input_ids"]).loss.backward()
        return [p.grad.clone() for p in model.vision_tower.parameters()]

    plain = grads()
    model.gradient_checkpointing_enable()
    tower = model.vision_tower.model
    assert getattr(tower, "grad_checkpointing", None) or tower.encoder.gradient_checkpointing
    assert model.language_model.model.gradient_checkpointing
    for g0, g1 in zip(plain, grads()):
        torch.testing.assert_close(g0, g1)


def test_pretrained_parts_are_loaded_and_reload_offline(tiny_tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM, SiglipVisionConfig, SiglipVisionModel

    cfg = tiny_composed_config("hf_siglip", "mlp")
    vcfg = dict(cfg["vision"]["config"])
    vcfg.pop("model_type")
    tower = SiglipVisionModel(SiglipVisionConfig(**vcfg))
    tower.save_pretrained(tmp_path / "tower")
    lm_model, _ = _build(tiny_tokenizer)
    lm_model.language_model.save_pretrained(tmp_path / "lm")
    cfg["vision"] = {"backend": "hf", "name": str(tmp_path / "tower"), "pretrained": True, "image_size": 32}
    cfg["text"] = {"path": str(tmp_path / "lm")}
    model, proc = build_composed(cfg, tiny_tokenizer)
    emb = tower.embeddings.patch_embedding.weight
    assert torch.equal(model.vision_tower.model.embeddings.patch_embedding.weight, emb)
    lm = AutoModelForCausalLM.from_pretrained(tmp_path / "lm")
    assert torch.equal(model.language_model.lm_head.weight, lm.lm_head.weight)
    assert model.config.vision["pretrained"] is False and model.config.vision["config"]["hidden_size"] == 32
    model.save_pretrained(tmp_path / "student")
    for sub in ("tower", "lm"):  # the saved student must not need the original parts
        for f in (tmp_path / sub).iterdir():
            f.unlink()
    again = type(model).from_pretrained(tmp_path / "student")
    assert torch.equal(again.vision_tower.model.embeddings.patch_embedding.weight, emb)


def test_unknown_names_list_the_valid_ones(tiny_tokenizer):
    cfg = tiny_composed_config()
    cfg["projector"]["type"] = "qformer"
    with pytest.raises(ValueError, match="mlp, pixel_shuffle_mlp"):
        build_composed(cfg, tiny_tokenizer)
    cfg = tiny_composed_config()
    cfg["vision"]["backend"] = "jax"
    with pytest.raises(ValueError, match="hf, open_clip, timm"):
        build_composed(cfg, tiny_tokenizer)


def test_text_only_training_batch_still_reaches_every_trainable_part(tiny_tokenizer):
    # DDP needs a gradient (zero is fine) for every trainable parameter in every step.
    model, proc = _build(tiny_tokenizer, "hf_siglip", "mlp")
    batch = proc(text="<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>")
    model.train()
    out = model(**batch, labels=batch["input_ids"])
    out.loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() == 0 for p in model.vision_tower.parameters())
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(**batch, labels=batch["input_ids"]).loss, out.loss.detach())


def test_hf_backend_takes_the_vision_part_of_a_composite_config(tiny_tokenizer):
    vision = {"model_type": "clip", "vision_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3,
                                                      "num_attention_heads": 2, "image_size": 48, "patch_size": 8}}
    cfg = tiny_composed_config("hf_clip", "pixel_shuffle_mlp", feature_layer=-2)
    cfg["vision"] = {"backend": "hf", "config": vision, "feature_layer": -2}
    model, proc = build_composed(cfg, tiny_tokenizer)
    assert type(model.vision_tower.model).__name__ == "CLIPVisionModel"
    assert model.config.vision["image_size"] == 48 and proc.image_processor.size == {"height": 48, "width": 48}
    assert len(model.vision_tower.model.encoder.layers) == 2  # blocks after layer -2 dropped
    assert model.config.num_image_tokens == 36 // 4
    batch = proc(text=PROMPT, images=_images(1))
    assert model(**batch).logits.shape[1] == batch["input_ids"].shape[1]


RESNET = {"backend": "timm", "name": "resnet10t", "feature_layer": 1, "image_size": 32,
          "config": {"layers": [1] * 4, "channels": [8, 16, 32, 64], "stem_width": 8}}


def test_tower_from_a_saved_model_is_copied_and_the_student_reloads_without_it(tiny_tokenizer, tmp_path):
    cfg = tiny_composed_config()
    cfg["vision"] = RESNET
    torch.manual_seed(0)
    source, _ = build_composed(cfg, tiny_tokenizer)
    source.save_pretrained(tmp_path / "teacher")
    student_cfg = tiny_composed_config()
    student_cfg["vision"] = {"from_model": str(tmp_path / "teacher")}
    torch.manual_seed(1)  # other random parts: only the tower is copied
    student, proc = build_composed(student_cfg, tiny_tokenizer)
    want = source.vision_tower.state_dict()
    got = student.vision_tower.state_dict()
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    assert not all(torch.equal(a, b) for a, b in zip(student.projector.parameters(), source.projector.parameters()))
    assert student.config.vision["from_model"] is None and student.config.vision["name"] == "resnet10t"
    assert proc.num_image_tokens == 64  # (32 px / stride 4)^2, from the saved tower's spec
    student.save_pretrained(tmp_path / "student")
    for f in (tmp_path / "teacher").iterdir():
        f.unlink()
    again = type(student).from_pretrained(tmp_path / "student")
    assert all(torch.equal(again.vision_tower.state_dict()[k], want[k]) for k in want)


def test_tower_from_model_refuses_a_conflicting_key_and_a_folder_without_a_model(tiny_tokenizer, tmp_path):
    cfg = tiny_composed_config()
    cfg["vision"] = RESNET
    source, _ = build_composed(cfg, tiny_tokenizer)
    source.save_pretrained(tmp_path / "teacher")
    bad = tiny_composed_config()
    bad["vision"] = {"from_model": str(tmp_path / "teacher"), "image_size": 64}
    with pytest.raises(ValueError, match=r"vision.image_size=64 differs from the tower of"):
        build_composed(bad, tiny_tokenizer)
    bad["vision"] = {"from_model": str(tmp_path / "nothing")}
    with pytest.raises(FileNotFoundError, match="vision.from_model"):
        build_composed(bad, tiny_tokenizer)


def test_a_frozen_batchnorm_tower_stays_in_eval_mode_and_keeps_its_statistics(tiny_tokenizer):
    cfg = tiny_composed_config()
    cfg["vision"] = RESNET
    model, proc = build_composed(cfg, tiny_tokenizer)
    before = {k: v.clone() for k, v in model.vision_tower.state_dict().items()}
    batch = proc(text=[PROMPT + "red<|im_end|>"] * 2, images=_images(2))
    model.train()
    assert model.vision_tower.training  # trainable: batch statistics, as usual
    model.vision_tower.requires_grad_(False)
    model.train()
    assert not model.vision_tower.training and model.language_model.training
    model(**batch, labels=batch["input_ids"]).loss.backward()
    after = model.vision_tower.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # running means/vars untouched
