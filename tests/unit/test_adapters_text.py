"""The text adapter: encoding, response rows vs the full model, soft-capping, generation, saving."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from taid_vlm.adapters import IGNORE_INDEX, build_adapter
from taid_vlm.data.template import TokenizerTemplate
from taid_vlm.data.tokenizer import CHATML_TEMPLATE
from taid_vlm.data.types import Sample, SkipSample
from taid_vlm.models.tiny import tiny_text_config

CONV = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": [{"type": "text", "text": "How many shapes are there?"}]},
    {"role": "assistant", "content": [{"type": "text", "text": "There are 3 shapes."}]},
    {"role": "user", "content": "Is there a blue square?"},
    {"role": "assistant", "content": "Yes."},
]


def _adapter(tok, kind="qwen2", pad=0, **extra):
    torch.manual_seed(0)
    cfg = {**tiny_text_config(kind, pad, len(tok)), **extra}
    a = build_adapter("text", config=cfg, tokenizer=tok)
    a.model.eval()
    return a


def _label_text(tok, enc):
    return tok.decode(enc["labels"][enc["labels"] != IGNORE_INDEX])


def test_encode_marks_both_answers_and_truncates_by_whole_turns(tiny_tokenizer):
    a = _adapter(tiny_tokenizer)
    enc = a.encode(Sample("t", CONV), max_length=512)
    assert _label_text(tiny_tokenizer, enc) == "There are 3 shapes.<|im_end|>Yes.<|im_end|>"
    short = a.encode(Sample("t", CONV), max_length=len(enc["input_ids"]) - 2)
    assert _label_text(tiny_tokenizer, short) == "There are 3 shapes.<|im_end|>"
    assert tiny_tokenizer.decode(short["input_ids"][-1:]) == "<|im_end|>"


def test_template_without_generation_markers_gives_the_same_mask(tiny_tokenizer):
    plain = CHATML_TEMPLATE.replace("{% generation %}", "").replace("{% endgeneration %}", "")
    msgs = [{**m, "content": m["content"] if isinstance(m["content"], str) else m["content"][0]["text"]}
            for m in CONV]
    marked = TokenizerTemplate(tiny_tokenizer).encode(msgs, 512)
    unmarked = TokenizerTemplate(tiny_tokenizer, plain).encode(msgs, 512)
    assert torch.equal(marked["labels"], unmarked["labels"]) and torch.equal(marked["input_ids"], unmarked["input_ids"])
    # ...and they are the labels HF's own {% generation %} mask gives for the marked template.
    hf = tiny_tokenizer.apply_chat_template(msgs, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    mask = torch.tensor(hf["assistant_masks"], dtype=torch.bool)
    assert torch.equal(marked["input_ids"], torch.tensor(hf["input_ids"]))
    assert torch.equal(marked["labels"] != IGNORE_INDEX, mask)


def test_images_are_refused(tiny_tokenizer):
    a = _adapter(tiny_tokenizer)
    s = Sample("img", [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi"}]},
                       {"role": "assistant", "content": "Hello!"}], images=["x.png"])
    with pytest.raises(SkipSample, match="image_for_text_model"):
        a.encode(s, 128)
    with pytest.raises(ValueError, match="text-only"):
        a.check_supports(s)


_SMALL = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4,
          "num_key_value_heads": 2}
FAMILIES = {
    "qwen2": {"model_type": "qwen2", **_SMALL},
    "llama": {"model_type": "llama", **_SMALL},
    "gpt2": {"model_type": "gpt2", "n_embd": 32, "n_layer": 1, "n_head": 2, "n_positions": 256},  # body: .transformer
    "gemma2": {"model_type": "gemma2", **_SMALL, "head_dim": 8, "final_logit_softcapping": 2.0},
    "cohere": {"model_type": "cohere", **_SMALL, "logit_scale": 0.5},
}


@pytest.mark.parametrize("family", FAMILIES)
def test_response_rows_give_the_full_models_logits(tiny_tokenizer, family):
    torch.manual_seed(0)
    cfg = {**FAMILIES[family], "vocab_size": len(tiny_tokenizer) + 4}
    a = build_adapter("text", config=cfg, tokenizer=tiny_tokenizer)
    a.model.eval()
    samples = [Sample("a", CONV), Sample("b", CONV[:3])]
    batch = a.collate([a.encode(s, 512) for s in samples])
    rh = a.response_hidden(batch)
    V = len(tiny_tokenizer)
    assert rh.weight.shape[0] == V and a.model.get_output_embeddings().weight.shape[0] == V + 4
    assert rh.logit_softcap == cfg.get("final_logit_softcapping") and rh.logit_scale == cfg.get("logit_scale", 1.0)
    with torch.no_grad():
        full = a.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    b, p = torch.nonzero(batch["labels"][:, 1:] != IGNORE_INDEX, as_tuple=True)
    torch.testing.assert_close(rh.logits(), full[b, p, :V], rtol=1e-5, atol=1e-5)


def test_batched_left_padded_generate_equals_single_greedy(tiny_tokenizer):
    a = _adapter(tiny_tokenizer, "llama")
    with torch.no_grad():
        for p in a.model.parameters():
            if p.ndim == 2:
                p.normal_(0, 0.3)
    samples = [Sample("a", CONV[:2]), Sample("b", CONV[:4])]
    batched = a.generate(samples, max_new_tokens=5)
    singles = [a.generate([s], max_new_tokens=5)[0] for s in samples]
    assert batched == singles and any(batched)


def test_saved_text_student_loads_with_plain_transformers(tiny_tokenizer, tmp_path):
    a = _adapter(tiny_tokenizer, pad=3)
    a.save(str(tmp_path))
    ids = a.tokenizer("There are 3 shapes.", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        ref = a.model(input_ids=ids).logits
    code = (
        "import sys, torch\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        f"m = AutoModelForCausalLM.from_pretrained({str(tmp_path)!r}).eval()\n"
        f"t = AutoTokenizer.from_pretrained({str(tmp_path)!r})\n"
        "ids = t('There are 3 shapes.', return_tensors='pt')['input_ids']\n"
        "with torch.no_grad(): print(m(input_ids=ids).logits.sum().item(), 'taid_vlm' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    total, imported = out.stdout.split()
    assert imported == "False"
    assert abs(float(total) - ref.sum().item()) < 1e-3 * max(1.0, abs(ref.sum().item()))


def test_head_smaller_than_tokenizer_is_refused(tiny_tokenizer):
    cfg = {**tiny_text_config("qwen2"), "vocab_size": len(tiny_tokenizer) - 1}
    with pytest.raises(ValueError, match="LM head has"):
        build_adapter("text", config=cfg, tokenizer=tiny_tokenizer)


def test_generation_never_picks_padded_vocab_rows(tiny_tokenizer):
    a = _adapter(tiny_tokenizer, pad=40)
    V = len(tiny_tokenizer)
    prompt = a.tokenizer.apply_chat_template(CONV[:2], tokenize=False, add_generation_prompt=True)
    ids = torch.tensor([a.tokenizer(prompt, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        # Padded rows along the last hidden state give them logit 100: they win every raw argmax.
        h = a.model.model(input_ids=ids).last_hidden_state[0, -1]
        a.model.lm_head.weight[V:] = h * (100.0 / h.square().sum())
        assert int(a.model(input_ids=ids).logits[0, -1].argmax()) >= V
    captured = {}
    original = a.model.generate

    def spy(*args, **kwargs):
        captured["out"] = original(*args, **kwargs)
        return captured["out"]

    a.model.generate = spy
    a.generate([Sample("a", CONV[:2])], max_new_tokens=4)
    new = captured["out"][0, ids.shape[1]:].tolist()
    assert new and all(i < V for i in new)


def test_pretrained_text_student_builds_from_path_and_auto_family(tiny_tokenizer, tmp_path):
    a = _adapter(tiny_tokenizer)
    a.save(str(tmp_path))
    again = build_adapter("auto", path=str(tmp_path))
    assert again.name == "text" and len(again.tokenizer) == len(tiny_tokenizer)
    batch = a.collate([a.encode(Sample("a", CONV), 512)])
    with torch.no_grad():
        torch.testing.assert_close(a.response_hidden(batch).logits(), again.response_hidden(batch).logits())
