"""Tokenizer and vocabulary checks at start-up."""

from __future__ import annotations

import copy

import pytest

from taid_vlm.adapters.checks import check_tokenizers, check_vocab
from taid_vlm.data.tokenizer import train_bpe_tokenizer


def test_same_tokenizer_passes(tiny_tokenizer):
    check_tokenizers(tiny_tokenizer, copy.deepcopy(tiny_tokenizer))


def test_an_extra_token_is_named(tiny_tokenizer):
    other = copy.deepcopy(tiny_tokenizer)
    other.add_tokens(["<extra_tok>"])
    with pytest.raises(ValueError) as err:
        check_tokenizers(tiny_tokenizer, other)
    msg = str(err.value)
    assert f"length {len(tiny_tokenizer)} (teacher) vs {len(tiny_tokenizer) + 1}" in msg
    assert "'<extra_tok>'" in msg


def test_a_different_tokenizer_shows_the_first_differing_tokens(tiny_tokenizer):
    other = train_bpe_tokenizer(["a completely different corpus of words"] * 10, vocab_size=len(tiny_tokenizer))
    with pytest.raises(ValueError) as err:
        check_tokenizers(tiny_tokenizer, other)
    msg = str(err.value)
    tv, ov = tiny_tokenizer.get_vocab(), other.get_vocab()
    first = min((i, t) for t, i in tv.items() if ov.get(t) != i)
    assert f"{first[1]!r}: id {first[0]} vs {ov.get(first[1])}" in msg
    assert "tokenizes differently" in msg


def test_special_token_difference_is_reported(tiny_tokenizer):
    other = copy.deepcopy(tiny_tokenizer)
    other.eos_token = "<|endoftext|>"
    with pytest.raises(ValueError, match="special token eos_token: '<\\|im_end\\|>' \\(teacher\\)"):
        check_tokenizers(tiny_tokenizer, other)


def test_check_vocab_allows_padding_only():
    check_vocab(512, 512)
    check_vocab(520, 512)
    with pytest.raises(ValueError, match="511 rows but the tokenizer has 512"):
        check_vocab(511, 512)


def test_a_processor_markup_name_on_one_side_only_passes(tiny_tokenizer):
    # transformers 5 lists a VLM tokenizer's image_token among its named special tokens; a text LM
    # student's tokenizer has no such name, yet every id is the same.
    from taid_vlm.models.tiny_hf import as_tokenizer_class

    named = as_tokenizer_class(tiny_tokenizer, type(tiny_tokenizer), image_token="<image>")
    assert named.special_tokens_map["image_token"] == "<image>"
    check_tokenizers(named, tiny_tokenizer)
    named.eos_token = "<|endoftext|>"
    with pytest.raises(ValueError, match="special token eos_token"):
        check_tokenizers(named, tiny_tokenizer)


def test_tokenizers_that_differ_only_in_added_tokens_are_told_to_share_one(tiny_tokenizer):
    from taid_vlm.models.tiny_hf import vlm_tokenizer

    teacher = vlm_tokenizer(tiny_tokenizer)  # the base BPE + the VLM families' markup tokens
    student = copy.deepcopy(tiny_tokenizer)  # a text LM's tokenizer; the composed student adds its image token
    student.add_special_tokens({"extra_special_tokens": ["<|image_pad|>"]}, replace_extra_special_tokens=False)
    assert student.convert_tokens_to_ids("<|image_pad|>") != teacher.convert_tokens_to_ids("<|image_pad|>")
    with pytest.raises(ValueError, match=r"differ only in added tokens .*set student.tokenizer to the teacher's"):
        check_tokenizers(teacher, student)
    other = train_bpe_tokenizer(["a completely different corpus of words"] * 10, vocab_size=len(tiny_tokenizer))
    with pytest.raises(ValueError) as err:
        check_tokenizers(teacher, other)
    assert "differ only in added tokens" not in str(err.value)
