"""The locally trained BPE tokenizer: deterministic, round-trips, ChatML with assistant masks."""

from __future__ import annotations

from transformers import AutoTokenizer

from taid_vlm.data.tokenizer import IMAGE_TOKEN, train_bpe_tokenizer


def test_roundtrip_and_special_tokens(tiny_tokenizer, tmp_path):
    text = "What colour is the circle? red"
    ids = tiny_tokenizer(text)["input_ids"]
    assert tiny_tokenizer.decode(ids) == text
    # The image placeholder is one token, never split by BPE.
    img_ids = tiny_tokenizer(IMAGE_TOKEN + IMAGE_TOKEN)["input_ids"]
    assert img_ids == [tiny_tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)] * 2
    tiny_tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded(text)["input_ids"] == ids
    assert len(loaded) == len(tiny_tokenizer)
    assert loaded.chat_template == tiny_tokenizer.chat_template


def test_deterministic_training():
    texts = ["a red circle and a blue square"] * 5 + ["two green triangles"] * 3
    a = train_bpe_tokenizer(texts, vocab_size=300)
    b = train_bpe_tokenizer(texts, vocab_size=300)
    assert a.get_vocab() == b.get_vocab()


def test_chat_template_marks_exactly_the_assistant_turn(tiny_tokenizer):
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour is it?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "red"}]},
    ]
    out = tiny_tokenizer.apply_chat_template(
        messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    ids = out["input_ids"]
    mask = out["assistant_masks"]
    marked = [i for i, m in zip(ids, mask) if m]
    assert tiny_tokenizer.decode(marked) == "red<|im_end|>"
    rendered = tiny_tokenizer.apply_chat_template(messages, tokenize=False)
    assert rendered == "<|im_start|>user\n<image>What colour is it?<|im_end|>\n<|im_start|>assistant\nred<|im_end|>\n"
