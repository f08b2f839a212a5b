"""Assistant-only labels by prefix rendering, for templates with and without generation markers."""

from __future__ import annotations

import pytest
import torch

from taid_vlm.data.template import (
    TemplateError,
    TokenizerTemplate,
    encode_conversation,
    encode_prompt,
)
from taid_vlm.data.types import SkipSample

# Llama-2 / Mistral style: no generation markers, no generation prompt, response after "[/INST]".
INST_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}{{ '[INST] ' + m['content'] + ' [/INST]' }}"
    "{% elif m['role'] == 'assistant' %}{{ ' ' + m['content'] + eos_token }}{% endif %}{% endfor %}"
)
# Vicuna style: the generation prompt ends in a space that the response's first token absorbs.
USER_ASSISTANT_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'system' %}{{ m['content'] }}\n"
    "{% elif m['role'] == 'user' %}USER: {{ m['content'] }}\n"
    "{% else %}ASSISTANT: {{ m['content'] }}{{ eos_token }}\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT: {% endif %}"
)
UNSTABLE_TEMPLATE = "{% for m in messages %}{% if loop.last %}LAST {% endif %}{{ m['content'] }}\n{% endfor %}"


def msg(role, text, images=0):
    return {"role": role, "content": [{"type": "image"}] * images + [{"type": "text", "text": text}]}


CONV = [
    msg("system", "You are a helpful assistant."),
    msg("user", "What colour is the circle?"),
    msg("assistant", "The circle is red."),
    msg("user", "How many shapes are there?"),
    msg("assistant", "There are 3 shapes."),
]


def label_runs(tok, labels: torch.Tensor) -> list[str]:
    """Decoded text of each contiguous run of labelled tokens."""
    runs, cur = [], []
    for v in labels.tolist() + [-100]:
        if v != -100:
            cur.append(v)
        elif cur:
            runs.append(tok.decode(cur))
            cur = []
    return runs


def test_chatml_labels_match_generation_markers(tiny_tokenizer):
    tok = tiny_tokenizer
    enc = TokenizerTemplate(tok).encode(CONV, max_length=512)
    ref = tok.apply_chat_template(CONV, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    assert enc["input_ids"].tolist() == list(ref["input_ids"])
    want = torch.tensor(ref["assistant_masks"], dtype=torch.bool)
    assert torch.equal(enc["labels"] != -100, want)
    assert label_runs(tok, enc["labels"]) == ["The circle is red.<|im_end|>", "There are 3 shapes.<|im_end|>"]
    assert enc["attention_mask"].tolist() == [1] * len(enc["input_ids"])
    assert enc["labels"].dtype == torch.long and enc["input_ids"].dim() == 1


@pytest.mark.parametrize("template", [INST_TEMPLATE, USER_ASSISTANT_TEMPLATE])
def test_templates_without_generation_markers(tiny_tokenizer, template):
    tok = tiny_tokenizer
    conv = CONV[1:] if template == INST_TEMPLATE else CONV
    enc = TokenizerTemplate(tok, template).encode(conv, max_length=512)
    runs = label_runs(tok, enc["labels"])
    assert [r.strip() for r in runs] == ["The circle is red.<|im_end|>", "There are 3 shapes.<|im_end|>"]
    # Nothing but the answer (its leading space at most) and the end-of-turn token is labelled.
    assert all(r in (a, " " + a) for r, a in zip(runs, ["The circle is red.<|im_end|>", "There are 3 shapes.<|im_end|>"]))
    ids = enc["input_ids"]
    assert tok.decode(ids) == TokenizerTemplate(tok, template).render(conv, False)
    assert torch.equal(enc["labels"][enc["labels"] != -100], ids[enc["labels"] != -100])


def test_eos_excluded_when_asked(tiny_tokenizer):
    enc = TokenizerTemplate(tiny_tokenizer).encode(CONV, max_length=512, eos_in_labels=False)
    assert label_runs(tiny_tokenizer, enc["labels"]) == ["The circle is red.", "There are 3 shapes."]


class ExpandingProcess:
    """A VLM-like ``process``: each ``<image>`` becomes 3 tokens; pixel_values of the first n images."""

    def __init__(self, tok, images: list[float]):
        self.tok, self.images = tok, images
        self.image_id = tok.convert_tokens_to_ids("<image>")

    def __call__(self, text: str, num_images: int) -> dict:
        ids = []
        for t in self.tok(text, add_special_tokens=False)["input_ids"]:
            ids += [t] * (3 if t == self.image_id else 1)
        assert ids.count(self.image_id) == 3 * num_images
        return {"input_ids": torch.tensor([ids]), "pixel_values": torch.tensor(self.images[:num_images])}


def multi_image_conv():
    return [
        msg("user", "What colour is the circle?", images=2),
        msg("assistant", "red"),
        msg("user", "Where is the triangle?", images=1),
        msg("assistant", "left"),
        msg("user", "Is there a blue square?"),
        msg("assistant", "Yes. There is a blue square on the right, at the top, in the middle of the image."),
    ]


def test_multi_turn_multi_image(tiny_tokenizer):
    tok, tt = tiny_tokenizer, TokenizerTemplate(tiny_tokenizer)
    process = ExpandingProcess(tok, [1.0, 2.0, 3.0])
    enc = encode_conversation(multi_image_conv(), render=tt.render, process=process, max_length=512)
    assert enc["input_ids"].dim() == 1 and int((enc["input_ids"] == process.image_id).sum()) == 9
    assert enc["pixel_values"].tolist() == [1.0, 2.0, 3.0]
    assert [r.replace("<|im_end|>", "") for r in label_runs(tok, enc["labels"])] == [
        "red", "left", multi_image_conv()[-1]["content"][0]["text"]]


def test_truncation_keeps_whole_turns_and_skips_cut_first_response(tiny_tokenizer):
    tok, tt = tiny_tokenizer, TokenizerTemplate(tiny_tokenizer)
    process = ExpandingProcess(tok, [1.0, 2.0, 3.0])
    conv = multi_image_conv()
    full = encode_conversation(conv, render=tt.render, process=process, max_length=512)
    two = encode_conversation(conv[:4], render=tt.render, process=process, max_length=512)
    # Budget ends inside the third response: the conversation is cut after turn 2.
    cut = encode_conversation(conv, render=tt.render, process=process, max_length=len(full["input_ids"]) - 3)
    assert len(cut["input_ids"]) <= len(full["input_ids"]) - 3
    assert torch.equal(cut["labels"], two["labels"][: len(cut["labels"])])
    assert label_runs(tok, cut["labels"]) == ["red<|im_end|>", "left<|im_end|>"]
    assert cut["pixel_values"].tolist() == [1.0, 2.0, 3.0]
    first = encode_conversation(conv[:2], render=tt.render, process=process, max_length=512)
    end_first = int((first["labels"] != -100).nonzero().max()) + 1
    ok = encode_conversation(conv, render=tt.render, process=process, max_length=end_first)
    assert label_runs(tok, ok["labels"]) == ["red<|im_end|>"] and ok["pixel_values"].tolist() == [1.0, 2.0]
    with pytest.raises(SkipSample) as err:
        encode_conversation(conv, render=tt.render, process=process, max_length=end_first - 1)
    assert err.value.reason == "response_truncated"


def test_unstable_template_and_no_assistant(tiny_tokenizer):
    with pytest.raises(TemplateError, match="prefix-stable"):
        TokenizerTemplate(tiny_tokenizer, UNSTABLE_TEMPLATE).encode(CONV, max_length=512)
    with pytest.raises(SkipSample) as err:
        TokenizerTemplate(tiny_tokenizer).encode(CONV[:2], max_length=512)
    assert err.value.reason == "no_assistant_turn"


def test_encode_prompt_drops_final_answer(tiny_tokenizer):
    tok, tt = tiny_tokenizer, TokenizerTemplate(tiny_tokenizer)
    enc = encode_prompt(CONV, render=tt.render, process=tt.process)
    text = tok.decode(enc["input_ids"])
    assert text.endswith("How many shapes are there?<|im_end|>\n<|im_start|>assistant\n")
    assert "There are 3 shapes." not in text and "The circle is red." in text
    assert enc["attention_mask"].tolist() == [1] * len(enc["input_ids"])
    assert torch.equal(tt.encode_prompt(CONV[:4])["input_ids"], enc["input_ids"])
