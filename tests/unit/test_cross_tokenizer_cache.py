"""The teacher cache across tokenizers: cached teacher ids + turns give the live alignment, and at
k = V the cached top-k gives the live teacher's losses and gradients in every mode."""

from __future__ import annotations

import pytest
import torch

from taid_vlm.cache.format import write_index, write_shard
from taid_vlm.cache.reader import TeacherCache
from taid_vlm.cache.writer import run_starts, topk_rows
from taid_vlm.data.alignment import Aligner, label_runs
from taid_vlm.data.collate import PairCollator
from taid_vlm.data.types import IGNORE_INDEX, Sample
from taid_vlm.losses import TopKLogprobs, get_loss
from taid_vlm.train.cross_step import CachedTeacherRows, cross_tokenizer_losses
from taid_vlm.train.step import cached_teacher_rows
from tests.conftest import _CORPUS
from tests.unit.test_cross_tokenizer import TEXT, _batch, _enc, _rows


@pytest.fixture(scope="module")
def other_tokenizer():
    """The second tokenizer of test_cross_tokenizer.py: same text, other size and pre-tokenizer."""
    from taid_vlm.data.tokenizer import train_bpe_tokenizer

    return train_bpe_tokenizer(_CORPUS * 20, vocab_size=300, pre_tokenizer="split_digits_punct")


def _cached(rows, vocab: int) -> CachedTeacherRows:
    return CachedTeacherRows(TopKLogprobs(rows["topk_ids"], rows["topk_logprobs"], rows["rest_mass"], vocab),
                             rows["targets"])


@pytest.mark.parametrize("name", ["taid", "fkl", "rkl", "tvd"])
@pytest.mark.parametrize("mode", ["byte_aligned", "uld"])
def test_full_k_cache_equals_live_teacher_in_value_and_gradient(tiny_tokenizer, other_tokenizer, mode, name):
    al = Aligner(mode, tiny_tokenizer, other_tokenizer)
    batch, ts, tt = _batch(al, [TEXT, "There are 12 shapes.", "The circle is red."], other_tokenizer,
                           tiny_tokenizer)
    v_t = len(tiny_tokenizer)
    live = _rows(len(tt), v_t, 12, 1, tt)
    live.hidden *= 2.0  # a confident teacher: its smallest probabilities are far below the largest
    # What cache-teacher stores at k = V in float32: every log-prob, no rest mass.
    cached = _cached({**topk_rows(live.logits(), v_t, torch.float32), "targets": tt}, v_t)
    values, grads = [], []
    for teacher in (live, cached):
        s = _rows(len(ts), len(other_tokenizer), 8, 0, ts, grad=True)
        loss = get_loss(name, **({"t": 0.6} if name == "taid" else {}))
        out = cross_tokenizer_losses(s, teacher, batch, loss, fused=True, chunk_size=5, distil_ratio=0.8)
        values.append(torch.stack([out["loss"].detach(), out["distil_loss"]]))
        grads.append(torch.autograd.grad(out["loss"], [s.hidden, s.weight]))
    assert batch.num_groups > 0 or mode == "uld"  # merged groups read the cached teacher ids
    assert float(values[0][1]) > 0
    torch.testing.assert_close(values[1], values[0], rtol=1e-5, atol=1e-6)
    for a, b in zip(*grads):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)  # fp32: the cache path log-softmaxes twice


def test_small_k_cache_spreads_the_rest_mass_and_stays_close(tiny_tokenizer, other_tokenizer):
    al = Aligner("byte_aligned", tiny_tokenizer, other_tokenizer)
    batch, ts, tt = _batch(al, [TEXT], other_tokenizer, tiny_tokenizer)
    v_t = len(tiny_tokenizer)
    live = _rows(len(tt), v_t, 12, 1, tt)
    live.hidden *= 3.0
    s = _rows(len(ts), len(other_tokenizer), 8, 0, ts)
    full = float(cross_tokenizer_losses(s, live, batch, get_loss("fkl"))["distil_loss"])
    rows = topk_rows(live.logits(), 32, torch.float16)
    cached = _cached({**rows, "targets": tt}, v_t)
    dense = cached.at(torch.arange(len(tt)))
    torch.testing.assert_close(dense.exp().sum(-1), torch.ones(len(tt)), rtol=1e-3, atol=1e-3)
    approx = float(cross_tokenizer_losses(s, cached, batch, get_loss("fkl"))["distil_loss"])
    assert abs(approx - full) < 0.05 * full, (approx, full)


# -- the collator and the cache's turn layout ----------------------------------------------------
class _TurnsAdapter:
    """encode/collate only: ``answers[sample.id]`` is a list of assistant turns in this tokenizer."""

    def __init__(self, tok, answers):
        self.tokenizer, self.answers = tok, answers

    def encode(self, sample, max_length):
        turns = [_enc(self.tokenizer, a) for a in self.answers[sample.id]]
        return {k: torch.cat([t[k] for t in turns]) for k in ("input_ids", "labels")}

    def collate(self, encodings):
        from taid_vlm.adapters.text import pad_right

        return pad_right([{**e, "attention_mask": torch.ones_like(e["input_ids"])} for e in encodings], 0)


def _write_cache(root, teacher, samples, vocab: int) -> TeacherCache:
    """What cache-teacher writes for ``teacher``'s encodings (random top-k rows, the real ids and turns)."""
    batch = teacher.collate([teacher.encode(x, 256) for x in samples])
    labels = batch["labels"]
    m = labels[:, 1:] != IGNORE_INDEX
    rows = topk_rows(torch.randn(int(m.sum()), vocab, generator=torch.Generator().manual_seed(0)), 16,
                     torch.float32)
    rows["targets"] = labels[:, 1:][m].to(torch.int32)
    rows["run_start"] = run_starts(labels)
    rows["offsets"] = torch.tensor([0, *m.sum(1).cumsum(0).tolist()])
    write_shard(root / "shard-00000.safetensors", [x.id for x in samples], rows)
    write_index(root, {"fingerprint": {}, "top_k": 16, "vocab_size": vocab, "dtype": "float32",
                       "shards": ["shard-00000.safetensors"]})
    return TeacherCache(root)


@pytest.mark.parametrize("mode", ["byte_aligned", "uld"])
def test_cached_teacher_ids_and_turns_give_the_live_alignment(tmp_path, tiny_tokenizer, other_tokenizer, mode):
    answers = {"a": [TEXT, "Yes, 12."], "b": ["The circle is red."], "c": ["No.", "There are 3 shapes."]}
    samples = [Sample(id=i, messages=[{"role": "user", "content": "q"}, {"role": "assistant", "content": "x"}])
               for i in answers]
    teacher = _TurnsAdapter(tiny_tokenizer, answers)
    # The student kept one turn of sample "c" (truncation): the alignment drops the teacher's second.
    student = _TurnsAdapter(other_tokenizer, {**answers, "c": ["No."]})
    cache = _write_cache(tmp_path, teacher, samples, len(tiny_tokenizer))
    assert cache.has_turns
    for x in samples:  # the cached ids laid out by turn are the teacher's response runs
        want = label_runs(teacher.encode(x, 256)["labels"])
        got = label_runs(cache.teacher_labels(x.id))
        assert [r.tolist() for r in got] == [r.tolist() for r in want]
    aligner = Aligner(mode, tiny_tokenizer, other_tokenizer)
    live = PairCollator(student, teacher, max_length=256, aligner=aligner)(samples)
    from_cache = PairCollator(student, None, max_length=256, teacher_cache=cache, aligner=aligner)(samples)
    assert from_cache["ids"] == live["ids"] == list(answers) and from_cache["teacher"] is None
    a, b = live["alignment"], from_cache["alignment"]
    for key in ("pair_t", "pair_s", "span_t", "span_t_group", "span_s", "span_s_group", "span_w", "teacher_rows"):
        assert torch.equal(getattr(a, key), getattr(b, key)), key
    assert a.counts == b.counts
    n_c = len(tiny_tokenizer("No.<|im_end|>", add_special_tokens=False)["input_ids"])
    assert b.teacher_rows[-1] == n_c < int(cache.counts(["c"])[0])
    # The step reads exactly the rows the live teacher returns: every sample's kept turns.
    s = _rows(int(from_cache["num_tokens"]), len(other_tokenizer), 8, 0)
    rows = cached_teacher_rows(cache, s, from_cache["ids"], b)
    live_targets = live["teacher"]["labels"][:, 1:]
    assert torch.equal(rows.targets, live_targets[live_targets != IGNORE_INDEX])


def test_rows_read_only_the_requested_prefix(tmp_path, tiny_tokenizer):
    answers = {"a": [TEXT, "Yes."], "b": ["No."]}
    samples = [Sample(id=i, messages=[]) for i in answers]
    cache = _write_cache(tmp_path, _TurnsAdapter(tiny_tokenizer, answers), samples, len(tiny_tokenizer))
    full = cache.rows(["a", "b"])
    part = cache.rows(["a", "b"], lengths=[3, 100])
    n_a = int(cache.counts(["a"])[0])
    assert torch.equal(part["targets"], torch.cat([full["targets"][:3], full["targets"][n_a:]]))


def test_cache_without_turns_is_told_apart(tmp_path, tiny_tokenizer):
    rows = topk_rows(torch.randn(4, 8), 2, torch.float16)
    rows.update(targets=torch.zeros(4, dtype=torch.int32), offsets=torch.tensor([0, 4]))
    write_shard(tmp_path / "shard-00000.safetensors", ["a"], rows)  # a cache from before run_start
    write_index(tmp_path, {"fingerprint": {}, "top_k": 2, "vocab_size": 8, "dtype": "float16",
                           "shards": ["shard-00000.safetensors"]})
    cache = TeacherCache(tmp_path)
    assert not cache.has_turns
    with pytest.raises(ValueError, match="teacher.tokenizer"):
        cache.teacher_tokenizer()  # and no stored copy of the teacher tokenizer either
