"""pad_sequences and PairCollator: per-side encoding, skips counted once, response alignment check."""

from __future__ import annotations

import pytest
import torch

from taid_vlm.data.collate import PairCollator, pad_sequences
from taid_vlm.data.readers import DataReport
from taid_vlm.data.template import TokenizerTemplate
from taid_vlm.data.types import Sample, SkipSample

# Same response rendering as ChatML ("answer<|im_end|>"), different prompt: a compatible teacher.
PLAIN_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}USER: {{ m['content'] }}\n"
    "{% elif m['role'] == 'system' %}{{ m['content'] }}\n"
    "{% else %}ASSISTANT:\n{{ m['content'] }}{{ eos_token }}\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:\n{% endif %}"
)
# The response gets a leading space: its token ids differ from ChatML's.
INST_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}{{ '[INST] ' + m['content'] + ' [/INST]' }}"
    "{% elif m['role'] == 'assistant' %}{{ ' ' + m['content'] + eos_token }}{% endif %}{% endfor %}"
)


class Side:
    """Minimal adapter: encode with a template, collate by right padding."""

    def __init__(self, tok, template=None, system=None):
        self.tt, self.tokenizer, self.system = TokenizerTemplate(tok, template), tok, system

    def encode(self, sample: Sample, max_length: int):
        msgs = sample.messages
        if self.system:
            msgs = [{"role": "system", "content": [{"type": "text", "text": self.system}]}, *msgs]
        return self.tt.encode(msgs, max_length)

    def collate(self, encs):
        return {"input_ids": pad_sequences([e["input_ids"] for e in encs], self.tokenizer.pad_token_id),
                "labels": pad_sequences([e["labels"] for e in encs], -100)}


def sample(sid, *answers):
    msgs = []
    for i, a in enumerate(answers):
        msgs += [{"role": "user", "content": [{"type": "text", "text": f"Question {i}?"}]},
                 {"role": "assistant", "content": [{"type": "text", "text": a}]}]
    return Sample(id=sid, messages=msgs)


def test_pad_sequences():
    a, b = torch.tensor([1, 2, 3]), torch.tensor([4])
    assert pad_sequences([a, b], 0).tolist() == [[1, 2, 3], [4, 0, 0]]
    assert pad_sequences([a, b], -100, side="left").tolist() == [[1, 2, 3], [-100, -100, 4]]
    with pytest.raises(ValueError, match="side"):
        pad_sequences([a], 0, side="middle")


def test_pair_batches_align(tiny_tokenizer):
    tok = tiny_tokenizer
    coll = PairCollator(Side(tok), Side(tok, PLAIN_TEMPLATE, system="You are a helpful assistant."), max_length=128)
    batch = coll([sample("a", "red"), sample("b", "The circle is red.", "3")])
    assert batch["ids"] == ["a", "b"]
    s, t = batch["student"]["labels"], batch["teacher"]["labels"]
    for i in range(2):
        assert torch.equal(s[i][s[i] != -100], t[i][t[i] != -100])
    assert batch["num_tokens"] == int((s != -100).sum())
    assert tok.decode(s[1][s[1] != -100]) == "The circle is red.<|im_end|>3<|im_end|>"


def test_sft_without_teacher(tiny_tokenizer):
    batch = PairCollator(Side(tiny_tokenizer), None, max_length=64)([sample("a", "red")])
    assert batch["teacher"] is None and batch["num_tokens"] == len(tiny_tokenizer("red<|im_end|>")["input_ids"])


def test_mismatch_names_the_sample(tiny_tokenizer):
    coll = PairCollator(Side(tiny_tokenizer), Side(tiny_tokenizer, INST_TEMPLATE), max_length=64)
    with pytest.raises(ValueError, match=r"sample 'odd-one'.*response position 0"):
        coll([sample("odd-one", "red")])


def test_skips_counted_once_and_strict(tiny_tokenizer):
    tok = tiny_tokenizer
    long_system = "You are a helpful assistant. " * 20
    report = DataReport()
    report.count_read(3)
    coll = PairCollator(Side(tok), Side(tok, PLAIN_TEMPLATE, system=long_system), max_length=40, report=report)
    for _ in range(2):  # two epochs over the same data
        batch = coll([sample("ok", "red"), sample("b", "blue")])
        assert batch["student"] is None and batch["ids"] == [] and batch["num_tokens"] == 0
        assert [x[:2] for x in batch["skipped"]] == [("ok", "response_truncated"), ("b", "response_truncated")]
    assert dict(report.skipped) == {"response_truncated": 2} and report.used == 1
    main = DataReport()  # as in the main process when a DataLoader worker ran the collator
    main.absorb(batch)
    main.absorb(batch)
    assert dict(main.skipped) == {"response_truncated": 2}
    strict = PairCollator(Side(tok), Side(tok, PLAIN_TEMPLATE, system=long_system), max_length=40, strict=True)
    with pytest.raises(SkipSample, match="sample 'ok'"):
        strict([sample("ok", "red")])


def test_truncation_on_one_side_trims_the_other(tiny_tokenizer):
    tok = tiny_tokenizer
    student, teacher = Side(tok), Side(tok, PLAIN_TEMPLATE, system="You are a helpful assistant.")
    x = sample("t", "red", "There are 3 shapes. " * 3)
    n_student = len(student.encode(x, 10_000)["input_ids"])
    one_turn_teacher = len(teacher.encode(sample("t", "red"), 10_000)["input_ids"])
    assert one_turn_teacher < n_student < len(teacher.encode(x, 10_000)["input_ids"])
    coll = PairCollator(student, teacher, max_length=n_student)
    batch = coll([x])
    s, t = batch["student"]["labels"][0], batch["teacher"]["labels"][0]
    assert tok.decode(s[s != -100]) == tok.decode(t[t != -100]) == "red<|im_end|>"
    assert batch["num_tokens"] == int((s != -100).sum())


def test_check_pair_prefix_rule():
    from taid_vlm.data.collate import check_pair, response_runs

    student = {"input_ids": torch.tensor([1, 5, 6, 2, 7]), "labels": torch.tensor([-100, 5, 6, -100, 7])}
    teacher = {"input_ids": torch.tensor([3, 5, 6]), "labels": torch.tensor([-100, 5, 6])}
    assert response_runs(student) == 2 and response_runs(teacher) == 1
    with pytest.raises(ValueError, match="truncation does not explain"):
        check_pair("s", dict(student), dict(teacher), num_turns=1)
    check_pair("s", student, teacher, num_turns=2)  # teacher kept 1 of 2 turns: student trimmed
    assert student["labels"].tolist() == [-100, 5, 6, -100, -100]


class CountingSide(Side):
    def __init__(self, tok):
        super().__init__(tok)
        self.calls = 0

    def encode(self, sample, max_length):
        self.calls += 1
        return super().encode(sample, max_length)


def test_encoding_cache_reuses_encodings_and_gives_the_same_batches(tiny_tokenizer):
    samples = [sample("a", "red"), sample("b", "The circle is red.", "3"), sample("c", "blue")]
    plain = PairCollator(Side(tiny_tokenizer), Side(tiny_tokenizer, PLAIN_TEMPLATE), max_length=128)
    s, t = CountingSide(tiny_tokenizer), CountingSide(tiny_tokenizer)
    cached = PairCollator(s, t, max_length=128, encode_cache_bytes=1 << 20)
    for _ in range(3):  # three epochs: each sample encoded once per side
        for batch in (samples[:2], samples[1:]):
            want, got = plain(batch), cached(batch)
            assert got["ids"] == want["ids"] and got["num_tokens"] == want["num_tokens"]
            assert torch.equal(got["student"]["labels"], want["student"]["labels"])
            assert torch.equal(got["student"]["input_ids"], want["student"]["input_ids"])
    assert s.calls == t.calls == 3 and cached.cache.hits == 9
    # Same id, other content (e.g. a generated response): encoded afresh, not served from the cache.
    cached([sample("a", "green")])
    assert s.calls == 4


def test_encoding_cache_is_bounded_in_bytes_and_skips_are_not_cached(tiny_tokenizer):
    s = CountingSide(tiny_tokenizer)
    one = PairCollator(s, None, max_length=128)._encode(sample("a", "red"), None)
    size = sum(v.numel() * v.element_size() for v in one[0].values())
    coll = PairCollator(s, None, max_length=128, encode_cache_bytes=2 * size + size // 2)
    for sid in "abc":  # three of the same size: the least recently used is dropped
        coll([sample(sid, "red")])
    assert len(coll.cache.items) == 2 and coll.cache.bytes <= coll.cache.max_bytes
    calls = s.calls
    coll([sample("c", "red")])
    assert s.calls == calls
    coll([sample("a", "red")])
    assert s.calls == calls + 1
    report = DataReport()
    coll = PairCollator(s, None, max_length=8, report=report, encode_cache_bytes=1 << 20)
    for _ in range(2):
        coll([sample("long", "a very long answer " * 20)])
    assert sum(report.skipped.values()) == 1 and not coll.cache.items
