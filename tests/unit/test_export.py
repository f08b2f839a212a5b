"""The composed student leaves as a transformers model: native LLaVA where the layout allows, else
the taid_vlm classes with their code (``auto_map``); both load without importing taid_vlm."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from taid_vlm.adapters import build_adapter
from taid_vlm.data.types import Sample
from taid_vlm.models.export import from_llava, native_llava_blocker, to_llava
from taid_vlm.models.factory import build_composed
from taid_vlm.models.tiny import tiny_composed_config

PROMPT = "<|im_start|>user\n<image>What colour is the circle?<|im_end|>\n<|im_start|>assistant\n"


def _image(seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (30, 40, 3), dtype=np.uint8))


def _sample() -> Sample:
    user = [{"type": "image"}, {"type": "text", "text": "What colour is the circle?"}]
    msgs = [{"role": "user", "content": user},
            {"role": "assistant", "content": [{"type": "text", "text": "The circle is red."}]}]
    return Sample(id="s0", messages=msgs, images=[_image()])


@pytest.mark.parametrize("vision", ["hf_siglip", "hf_clip"])
def test_llava_export_gives_the_same_tokens_pixels_and_logits(tiny_tokenizer, vision):
    torch.manual_seed(0)
    model, proc = build_composed(tiny_composed_config(vision, "mlp", feature_layer=-1), tiny_tokenizer)
    model.eval()
    llava, lproc = to_llava(model, proc)
    ours = proc(text=PROMPT, images=[_image()])
    theirs = lproc(text=PROMPT, images=[_image()], return_tensors="pt")
    assert torch.equal(ours["input_ids"], theirs["input_ids"])  # LlavaProcessor expands <image> the same
    torch.testing.assert_close(ours["pixel_values"], theirs["pixel_values"])
    with torch.no_grad():
        torch.testing.assert_close(llava(**theirs).logits, model(**ours).logits, rtol=0, atol=1e-5)
        back, bproc = from_llava(llava, lproc)
        torch.testing.assert_close(back.eval()(**bproc(text=PROMPT, images=[_image()])).logits,
                                   model(**ours).logits, rtol=0, atol=1e-5)


def test_layouts_without_a_transformers_class_are_named(tiny_tokenizer):
    model, _ = build_composed(tiny_composed_config("timm_vit", "mlp"), tiny_tokenizer)
    assert "timm vision tower has no transformers class" in native_llava_blocker(model)
    model, proc = build_composed(tiny_composed_config("hf_siglip", "pixel_shuffle_mlp"), tiny_tokenizer)
    assert "pixel_shuffle_mlp projector" in native_llava_blocker(model)
    with pytest.raises(ValueError, match="cannot be saved as a native LLaVA model: the pixel_shuffle_mlp"):
        to_llava(model, proc)


def _run_outside(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


# Run in a fresh interpreter: load, chat template -> generate, pipeline; never imports taid_vlm.
OUTSIDE = """
import sys, torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor, pipeline
path, remote = {path!r}, {remote!r}
model = AutoModelForImageTextToText.from_pretrained(path, trust_remote_code=remote).eval()
proc = AutoProcessor.from_pretrained(path, trust_remote_code=remote)
msgs = [{{"role": "user", "content": [{{"type": "image", "image": Image.new("RGB", (40, 30), (200, 30, 30))}},
                                     {{"type": "text", "text": "What colour is the circle?"}}]}}]
inputs = proc.apply_chat_template(msgs, tokenize=True, return_dict=True, add_generation_prompt=True,
                                  return_tensors="pt")
with torch.no_grad():
    logits = model(**inputs).logits[0, -1]
out = model.generate(**inputs, max_new_tokens=3, do_sample=False, min_new_tokens=3)
pipe = pipeline("image-text-to-text", model=path, trust_remote_code=remote)
reply = pipe(text=msgs, max_new_tokens=2, do_sample=False)[0]["generated_text"][-1]
print(type(model).__name__, out.shape[1] - inputs["input_ids"].shape[1], reply["role"],
      round(float(logits.sum()), 3), "taid_vlm" in sys.modules)
"""


def _reference_logit_sum(adapter) -> float:
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour is the circle?"}]}]
    text = adapter.tokenizer.apply_chat_template(msgs, chat_template=adapter.chat_template, tokenize=False,
                                                 add_generation_prompt=True)
    batch = adapter.processor(text=text, images=[Image.new("RGB", (40, 30), (200, 30, 30))])
    with torch.no_grad():
        return float(adapter.model.eval()(**batch).logits[0, -1].sum())


def test_native_student_loads_generates_and_pipelines_without_the_package(tiny_tokenizer, tmp_path):
    torch.manual_seed(0)
    a = build_adapter("composed", config=tiny_composed_config("hf_clip", "mlp"), tokenizer=tiny_tokenizer)
    a.save(str(tmp_path))
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "llava"
    name, new, role, total, imported = _run_outside(OUTSIDE.format(path=str(tmp_path), remote=False)).split()
    assert (name, new, role, imported) == ("LlavaForConditionalGeneration", "3", "assistant", "False")
    assert abs(float(total) - _reference_logit_sum(a)) < 1e-2
    # Back into taid-vlm: as the composed student (to continue training) and as a llava teacher.
    again = build_adapter("composed", path=str(tmp_path))
    teacher = build_adapter("auto", path=str(tmp_path))
    assert again.name == "composed" and teacher.name == "llava"
    batch = a.collate([a.encode(_sample(), 256)])
    tbatch = teacher.collate([teacher.encode(_sample(), 256)])
    assert torch.equal(batch["input_ids"], tbatch["input_ids"])
    with torch.no_grad():
        ref = a.response_hidden(batch).logits()
        torch.testing.assert_close(again.response_hidden(batch).logits(), ref, rtol=0, atol=1e-5)
        torch.testing.assert_close(teacher.response_hidden(tbatch).logits(), ref, rtol=0, atol=1e-5)


def test_timm_student_loads_with_its_saved_code_only(tiny_tokenizer, tmp_path):
    torch.manual_seed(0)
    a = build_adapter("composed", config=tiny_composed_config("timm_vit", "pixel_shuffle_mlp"),
                      tokenizer=tiny_tokenizer)
    a.save(str(tmp_path))
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["auto_map"]["AutoModelForImageTextToText"] == "modeling.TaidVLMForConditionalGeneration"
    assert (tmp_path / "vision_timm.py").is_file() and not (tmp_path / "vision_open_clip.py").exists()
    name, new, role, total, imported = _run_outside(OUTSIDE.format(path=str(tmp_path), remote=True)).split()
    assert (name, new, role, imported) == ("TaidVLMForConditionalGeneration", "3", "assistant", "False")
    assert abs(float(total) - _reference_logit_sum(a)) < 1e-2
    assert build_adapter("auto", path=str(tmp_path)).name == "composed"


def test_a_tokenizer_without_the_image_token_gets_it_added_and_saved(tiny_tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    lm, _ = build_composed(tiny_composed_config("hf_siglip", "mlp"), tiny_tokenizer)
    lm.language_model.save_pretrained(tmp_path / "lm")  # vocab == len(tokenizer): no spare row
    cfg = {**tiny_composed_config("hf_siglip", "mlp"), "text": {"path": str(tmp_path / "lm")},
           "image_token": "<img_slot>"}
    n = len(tiny_tokenizer)
    from taid_vlm.data.tokenizer import CHATML_TEMPLATE

    template = CHATML_TEMPLATE.replace("<image>", "<img_slot>")
    a = build_adapter("composed", config=cfg, tokenizer=tiny_tokenizer, chat_template=template)
    assert len(tiny_tokenizer) == n  # the caller's tokenizer is left alone
    assert len(a.tokenizer) == n + 1 and a.model.config.image_token_id == n
    assert a.model.get_input_embeddings().weight.shape[0] == n + 1
    # The pretrained LM keeps its attention kernel inside the composed model (transformers 5 reset it).
    assert a.model.language_model.config._attn_implementation == "sdpa"
    a.save(str(tmp_path / "student"))
    assert AutoTokenizer.from_pretrained(tmp_path / "student").convert_tokens_to_ids("<img_slot>") == n
    again = build_adapter("composed", path=str(tmp_path / "student"), chat_template=template)
    batch = a.collate([a.encode(_sample(), 256)])
    assert int((batch["input_ids"] == n).sum()) == a.model.config.num_image_tokens
    with torch.no_grad():
        torch.testing.assert_close(again.response_hidden(batch).logits(), a.response_hidden(batch).logits())
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "lm").get_input_embeddings().weight.shape[0] == n


def test_a_tokenizer_without_chat_template_is_refused_before_training(tiny_tokenizer):
    import copy

    tok = copy.deepcopy(tiny_tokenizer)
    tok.chat_template = None
    with pytest.raises(ValueError, match="no chat template; .* set `chat_template` in the student config"):
        build_adapter("composed", config=tiny_composed_config(), tokenizer=tok)
