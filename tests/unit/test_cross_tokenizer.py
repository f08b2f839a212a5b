"""Cross-tokenizer distillation: span alignment, shared vocabulary, mapped losses, TAID limits."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F

from taid_vlm.adapters.base import ResponseHidden
from taid_vlm.data.alignment import (
    Aligner,
    char_ends,
    offset_ends,
    prefix_ends,
    shared_vocab,
    span_groups,
)
from taid_vlm.data.types import IGNORE_INDEX, SkipSample
from taid_vlm.data.vocab_map import token_strings
from taid_vlm.losses import LOSS_NAMES, get_loss
from taid_vlm.losses.cross_tokenizer import map_to_student_vocab, rank_logprobs, span_outcome_logits
from taid_vlm.train.cross_step import cross_tokenizer_losses
from taid_vlm.train.step import compute_losses
from tests.conftest import _CORPUS

TEXT = "The circle is red. There are 3 shapes, 12 in all!"
DIVERGENCES = [n for n in LOSS_NAMES if n not in ("sft", "dkd")]


@pytest.fixture(scope="module")
def other_tokenizer():
    """Trained on the same text as ``tiny_tokenizer`` with another vocabulary size and pre-tokenizer."""
    from taid_vlm.data.tokenizer import train_bpe_tokenizer

    return train_bpe_tokenizer(_CORPUS * 20, vocab_size=300, pre_tokenizer="split_digits_punct")


def permuted_tokenizer(tok, seed=0):
    """The same tokenizer with its (non-special) ids shuffled: equal text, different ids."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    spec = json.loads(tok.backend_tokenizer.to_str())
    vocab = spec["model"]["vocab"]
    fixed = {t["id"] for t in spec["added_tokens"]}
    movable = sorted(i for i in vocab.values() if i not in fixed)
    shuffled = [movable[i] for i in torch.randperm(len(movable), generator=torch.Generator().manual_seed(seed))]
    perm = dict(zip(movable, shuffled))
    spec["model"]["vocab"] = {k: perm.get(i, i) for k, i in vocab.items()}
    new = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(spec)), bos_token=tok.bos_token,
                                  eos_token=tok.eos_token, pad_token=tok.pad_token,
                                  extra_special_tokens=tok.extra_special_tokens)  # transformers 5 name
    new.chat_template = tok.chat_template
    return new, torch.tensor([perm.get(i, i) for i in range(len(tok))])  # student id -> teacher id


def _enc(tok, text, prompt="<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"):
    p = tok(prompt, add_special_tokens=False)["input_ids"]
    r = tok(text + "<|im_end|>", add_special_tokens=False)["input_ids"]
    ids = torch.tensor(p + r)
    return {"input_ids": ids, "labels": torch.tensor([IGNORE_INDEX] * len(p) + r)}


# -- alignment ----------------------------------------------------------------------------------
def test_identical_texts_give_aligned_spans(tiny_tokenizer, other_tokenizer):
    a, b = tiny_tokenizer(TEXT)["input_ids"], other_tokenizer(TEXT)["input_ids"]
    assert a != b and len(tiny_tokenizer) != len(other_tokenizer)  # two real tokenizations
    ta, ea = char_ends(tiny_tokenizer, a)
    tb, eb = char_ends(other_tokenizer, b)
    assert ta == tb == TEXT and ea[-1] == eb[-1] == len(TEXT)
    groups = span_groups(ea, eb)
    # Contiguous cover of both sequences, and each group is the same text on both sides.
    assert groups[0][0] == groups[0][2] == 0 and groups[-1][1] == len(a) and groups[-1][3] == len(b)
    for (t0, t1, s0, s1), nxt in zip(groups, groups[1:] + [None]):
        assert tiny_tokenizer.decode(a[t0:t1]) == other_tokenizer.decode(b[s0:s1])
        if nxt:
            assert (t1, s1) == (nxt[0], nxt[2])
    assert any(t1 - t0 == 1 and s1 - s0 == 1 for t0, t1, s0, s1 in groups)
    assert any(s1 - s0 > 1 for t0, t1, s0, s1 in groups)  # "12" is one token on one side, two on the other


@pytest.mark.parametrize("text", [TEXT, "Ünïcödé 日本語 🙂 ok", "a  b\n\nc"])
def test_offset_mapping_ends_equal_prefix_decoding(tiny_tokenizer, other_tokenizer, text):
    for tok in (tiny_tokenizer, other_tokenizer):
        ids = tok(text)["input_ids"] + [tok.eos_token_id]
        decoded = tok.decode(ids, skip_special_tokens=True)
        fast, slow = offset_ends(tok, ids, decoded), prefix_ends(tok, ids, decoded)
        assert slow[-1] == slow[-2] == len(decoded)  # the end-of-turn token has zero width
        assert fast is None or fast == slow, (tok.convert_ids_to_tokens(ids), fast, slow)
    # Plain ASCII text takes the one-pass offset path.
    ids = tiny_tokenizer(TEXT)["input_ids"]
    assert offset_ends(tiny_tokenizer, ids, TEXT) is not None


def test_same_tokenizer_aligns_one_to_one(tiny_tokenizer):
    ids = tiny_tokenizer(TEXT)["input_ids"]
    _, ends = char_ends(tiny_tokenizer, ids)
    assert span_groups(ends, ends) == [(i, i + 1, i, i + 1) for i in range(len(ids))]
    t, s = shared_vocab(tiny_tokenizer, tiny_tokenizer)
    assert torch.equal(t, s) and len(t) == len(tiny_tokenizer)


def test_shared_vocab_pairs_identical_strings(tiny_tokenizer, other_tokenizer):
    t, s = shared_vocab(tiny_tokenizer, other_tokenizer)
    ts, ss = token_strings(tiny_tokenizer), token_strings(other_tokenizer)
    assert 0 < len(t) <= len(other_tokenizer)
    assert all(ts[i] == ss[j] for i, j in zip(t.tolist(), s.tolist()))
    assert len(set(s.tolist())) == len(s)  # a student id receives one teacher id at most
    assert tiny_tokenizer.convert_ids_to_tokens(int(t[(s == other_tokenizer.eos_token_id)][0])) == "<|im_end|>"


def test_aligner_groups_use_batch_rows(tiny_tokenizer, other_tokenizer):
    al = Aligner("byte_aligned", tiny_tokenizer, other_tokenizer)
    texts = ["The circle is red.", TEXT]
    aligned = [al.align(str(i), _enc(other_tokenizer, x), _enc(tiny_tokenizer, x)) for i, x in enumerate(texts)]
    batch = al.collate(aligned)
    n_s = sum(x.n_student for x in aligned)
    c = batch.counts
    assert c["xtok_one_to_one"] + c["xtok_merged"] == n_s and c["xtok_unaligned"] == 0
    assert c["xtok_one_to_one"] > 0 and c["xtok_merged"] > 0
    # Rows of the second sample come after every row of the first.
    assert int(batch.pair_s.max()) < n_s and int(batch.span_t.max()) < sum(x.n_teacher for x in aligned)
    assert batch.span_w.sum() == c["xtok_merged"]


def test_aligner_skips_with_reasons(tiny_tokenizer, other_tokenizer):
    al = Aligner("byte_aligned", tiny_tokenizer, other_tokenizer)
    with pytest.raises(SkipSample) as e:
        al.align("x", _enc(other_tokenizer, "The circle is red."), _enc(tiny_tokenizer, "The circle is blue."))
    assert e.value.reason == "xtok_text_mismatch" and "character 14" in e.value.detail
    with pytest.raises(SkipSample) as e:
        al.align("y", _enc(other_tokenizer, ""), _enc(tiny_tokenizer, ""))
    assert e.value.reason == "xtok_no_text"
    # ULD needs no text: position by position up to the shorter side.
    uld = Aligner("uld", tiny_tokenizer, other_tokenizer).align("z", _enc(other_tokenizer, TEXT),
                                                                 _enc(tiny_tokenizer, TEXT))
    assert len(uld.groups) == min(uld.n_teacher, uld.n_student) < uld.n_student


def test_aligner_keeps_the_turns_both_sides_kept(tiny_tokenizer, other_tokenizer):
    two = _enc(other_tokenizer, "Yes.")
    more = _enc(other_tokenizer, "No.")
    two = {k: torch.cat([two[k], more[k]]) for k in two}  # a second assistant turn on the student side
    al = Aligner("byte_aligned", tiny_tokenizer, other_tokenizer).align("t", two, _enc(tiny_tokenizer, "Yes."))
    assert al.n_student == len(other_tokenizer("Yes.<|im_end|>")["input_ids"])
    assert int((two["labels"] != IGNORE_INDEX).sum()) == al.n_student  # the extra turn was unlabelled


def test_no_common_alphabet_is_refused_at_start_up(tiny_tokenizer):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    alien = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"αβγ": 0, "δεζ": 1}, unk_token="αβγ")))
    with pytest.raises(ValueError, match="tokenizer_alignment: byte_aligned .* use uld"):
        Aligner("byte_aligned", alien, tiny_tokenizer)


# -- mapped losses -------------------------------------------------------------------------------
def _rows(n, v, h, seed, targets=None, grad=False):
    g = torch.Generator().manual_seed(seed)
    hid = torch.randn(n, h, generator=g)
    w = torch.randn(v, h, generator=g) * 0.8
    if grad:
        hid.requires_grad_()
        w.requires_grad_()
    tg = torch.randint(0, v, (n,), generator=g) if targets is None else targets
    return ResponseHidden(hidden=hid, weight=w, targets=tg, sample_index=torch.zeros(n, dtype=torch.long))


def _batch(aligner, texts, s_tok, t_tok):
    encs = [(_enc(s_tok, x), _enc(t_tok, x)) for x in texts]
    aligned = [aligner.align(str(i), s, t) for i, (s, t) in enumerate(encs)]
    ts = torch.cat([s["labels"][s["labels"] != IGNORE_INDEX] for s, _ in encs])
    tt = torch.cat([t["labels"][t["labels"] != IGNORE_INDEX] for _, t in encs])
    return aligner.collate(aligned), ts, tt


@pytest.mark.parametrize("name", ["taid", "fkl", "gjsd"])
def test_byte_aligned_with_one_tokenizer_equals_shared_mode(tiny_tokenizer, name):
    al = Aligner("byte_aligned", tiny_tokenizer, tiny_tokenizer)
    batch, ts, tt = _batch(al, ["The circle is red.", TEXT], tiny_tokenizer, tiny_tokenizer)
    s, t = _rows(len(ts), len(tiny_tokenizer), 8, 0, ts), _rows(len(tt), len(tiny_tokenizer), 12, 1, tt)
    opts = {"t": 0.6} if name == "taid" else {}
    shared = compute_losses(s, t, get_loss(name, **opts), fused=False, distil_ratio=0.7)
    cross = cross_tokenizer_losses(s, t, batch, get_loss(name, **opts), fused=False, distil_ratio=0.7)
    for k in ("loss", "distil_loss", "lm_loss"):
        torch.testing.assert_close(cross[k], shared[k], rtol=1e-5, atol=1e-5)
    assert float(cross["xtok_one_to_one"]) == len(ts)


def test_teacher_equal_up_to_tokenizer_gives_zero_loss(tiny_tokenizer):
    t_tok, perm = permuted_tokenizer(tiny_tokenizer)
    with pytest.raises(ValueError):
        from taid_vlm.adapters.checks import check_tokenizers

        check_tokenizers(t_tok, tiny_tokenizer)
    al = Aligner("byte_aligned", t_tok, tiny_tokenizer)
    assert torch.equal(perm[al.vocab_s], al.vocab_t)  # the map found the permutation
    batch, ts, tt = _batch(al, ["The circle is red.", TEXT], tiny_tokenizer, t_tok)
    s = _rows(len(ts), len(tiny_tokenizer), 8, 0, ts)
    w_t = torch.empty_like(s.weight)
    w_t[perm] = s.weight  # teacher row of teacher id perm[i] = student row of student id i
    t = ResponseHidden(hidden=s.hidden.clone(), weight=w_t, targets=tt, sample_index=s.sample_index)
    for name in ("taid", "fkl", "rkl", "tvd"):
        out = cross_tokenizer_losses(s, t, batch, get_loss(name, **({"t": 1.0} if name == "taid" else {})))
        assert abs(float(out["distil_loss"])) < 1e-5, name
    other = _rows(len(tt), len(tiny_tokenizer), 8, 5, tt)
    assert float(cross_tokenizer_losses(s, other, batch, get_loss("fkl"))["distil_loss"]) > 0.1


@pytest.mark.parametrize("mode", ["byte_aligned", "uld"])
def test_taid_limits_in_each_mode(tiny_tokenizer, other_tokenizer, mode):
    al = Aligner(mode, tiny_tokenizer, other_tokenizer)
    batch, ts, tt = _batch(al, [TEXT, "How many shapes are there? 3."], other_tokenizer, tiny_tokenizer)
    t = _rows(len(tt), len(tiny_tokenizer), 12, 1, tt)
    s = _rows(len(ts), len(other_tokenizer), 8, 0, ts, grad=True)
    at1 = cross_tokenizer_losses(s, t, batch, get_loss("taid", t=1.0))["distil_loss"]
    fkl = cross_tokenizer_losses(s, t, batch, get_loss("fkl"))["distil_loss"]
    torch.testing.assert_close(at1, fkl, rtol=1e-5, atol=1e-6)
    assert float(fkl) > 0
    out0 = cross_tokenizer_losses(s, t, batch, get_loss("taid", t=0.0), distil_ratio=1.0)
    assert abs(float(out0["distil_loss"])) < 1e-6
    gh, gw = torch.autograd.grad(out0["loss"], [s.hidden, s.weight])
    assert float(gh.abs().max()) < 1e-6 and float(gw.abs().max()) < 1e-6


@pytest.mark.parametrize("name", DIVERGENCES)
@pytest.mark.parametrize("mode", ["byte_aligned", "uld"])
def test_chunked_equals_full_for_every_divergence(tiny_tokenizer, other_tokenizer, mode, name):
    al = Aligner(mode, tiny_tokenizer, other_tokenizer)
    batch, ts, tt = _batch(al, [TEXT, "There are 12 shapes."], other_tokenizer, tiny_tokenizer)
    t = _rows(len(tt), len(tiny_tokenizer), 12, 1, tt)
    grads, values = [], []
    for fused, chunk in ((False, 1024), (True, 3)):
        s = _rows(len(ts), len(other_tokenizer), 8, 0, ts, grad=True)
        loss = get_loss(name, **({"t": 0.5} if name == "taid" else {}))
        out = cross_tokenizer_losses(s, t, batch, loss, fused=fused, chunk_size=chunk, distil_ratio=0.8)
        values.append(torch.stack([out["loss"].detach(), out["distil_loss"], out["lm_loss"]]))
        grads.append(torch.autograd.grad(out["loss"], [s.hidden, s.weight]))
    torch.testing.assert_close(values[0], values[1], rtol=3e-5, atol=1e-6)  # fp32 sums in another order (ctkd scales by tau^2)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert torch.isfinite(values[0]).all() and float(values[0][1]) >= -1e-6


def test_uld_tvd_is_half_the_sorted_l1_distance():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(5, 11, generator=g), torch.randn(5, 11, generator=g) * 2
    l1 = (torch.sort(s.softmax(-1), descending=True).values - torch.sort(t.softmax(-1), descending=True).values)
    tvd = get_loss("tvd")(rank_logprobs(s, 11), rank_logprobs(t, 11), reduction="sum")
    torch.testing.assert_close(2 * tvd, l1.abs().sum())
    folded = rank_logprobs(t, 4).exp()  # the tail beyond rank 3 goes into the last rank
    sorted_t = torch.sort(t.softmax(-1), descending=True).values
    torch.testing.assert_close(folded[:, :3], sorted_t[:, :3])
    torch.testing.assert_close(folded[:, 3], sorted_t[:, 3:].sum(-1))


def test_mapping_and_span_outcomes_by_hand():
    t = torch.log(torch.tensor([[0.5, 0.3, 0.2]]))
    mapped = map_to_student_vocab(t, torch.tensor([0, 2]), torch.tensor([3, 1]), 4)
    assert torch.isneginf(mapped[0, [0, 2]]).all()
    torch.testing.assert_close(mapped[0, [3, 1]].exp(), torch.tensor([0.5, 0.2]))
    logits = torch.log(torch.tensor([[0.5, 0.5], [0.25, 0.75], [0.9, 0.1]]))
    two = span_outcome_logits(logits, torch.tensor([0, 1, 0]), torch.tensor([0, 0, 1]), 2).exp()
    torch.testing.assert_close(two, torch.tensor([[0.375, 0.625], [0.9, 0.1]]))


def test_merged_groups_weigh_by_student_tokens(tiny_tokenizer, other_tokenizer):
    al = Aligner("byte_aligned", tiny_tokenizer, other_tokenizer)
    batch, ts, tt = _batch(al, [TEXT], other_tokenizer, tiny_tokenizer)
    t = _rows(len(tt), len(tiny_tokenizer), 12, 1, tt)
    s = _rows(len(ts), len(other_tokenizer), 8, 0, ts)
    only_pairs = copy.copy(batch)
    only_pairs.span_w = batch.span_w[:0]
    full = cross_tokenizer_losses(s, t, batch, get_loss("fkl"))["distil_loss"]
    pairs = cross_tokenizer_losses(s, t, only_pairs, get_loss("fkl"))["distil_loss"]
    # The merged part, by hand: two-outcome forward KL of each group's text probability.
    s_lp = F.log_softmax(s.logits(), -1).gather(1, ts.unsqueeze(1)).squeeze(1)
    t_lp = F.log_softmax(t.logits(), -1).gather(1, tt.unsqueeze(1)).squeeze(1)
    g = batch.num_groups
    ps = torch.zeros(g).index_add(0, batch.span_s_group, s_lp[batch.span_s]).exp()
    pt = torch.zeros(g).index_add(0, batch.span_t_group, t_lp[batch.span_t]).exp()
    kl = pt * (pt.log() - ps.log()) + (1 - pt) * ((1 - pt).log() - (1 - ps).log())
    torch.testing.assert_close(full - pairs, (kl * batch.span_w).sum(), rtol=1e-4, atol=1e-6)


class _StubAdapter:
    """encode/collate only: the response text is ``answers[sample.id]`` in this adapter's tokenizer."""

    def __init__(self, tok, answers):
        self.tokenizer, self.answers = tok, answers

    def encode(self, sample, max_length):
        return _enc(self.tokenizer, self.answers[sample.id])

    def collate(self, encodings):
        from taid_vlm.adapters.text import pad_right

        return pad_right([{**e, "attention_mask": torch.ones_like(e["input_ids"])} for e in encodings], 0)


def test_collator_skips_unalignable_samples_and_counts_them(tiny_tokenizer, other_tokenizer):
    from taid_vlm.data.collate import PairCollator
    from taid_vlm.data.report import DataReport
    from taid_vlm.data.types import Sample

    samples = [Sample(id=str(i), messages=[{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}])
               for i in range(3)]
    student = _StubAdapter(other_tokenizer, {"0": TEXT, "1": "The circle is red.", "2": ""})
    teacher = _StubAdapter(tiny_tokenizer, {"0": TEXT, "1": "The square is red.", "2": ""})
    report = DataReport()
    coll = PairCollator(student, teacher, max_length=256, report=report,
                        aligner=Aligner("byte_aligned", tiny_tokenizer, other_tokenizer))
    batch = coll(samples)
    assert batch["ids"] == ["0"] and dict(report.skipped) == {"xtok_text_mismatch": 1, "xtok_no_text": 1}
    n_s = int((batch["student"]["labels"][:, 1:] != IGNORE_INDEX).sum())
    counts = batch["alignment"].counts
    assert counts["xtok_one_to_one"] + counts["xtok_merged"] == n_s == batch["num_tokens"]
    with pytest.raises(SkipSample, match="sample '1'"):
        PairCollator(student, teacher, max_length=256, strict=True,
                     aligner=Aligner("byte_aligned", tiny_tokenizer, other_tokenizer))(samples)


def test_chunked_path_keeps_no_full_logits_for_backward(tiny_tokenizer, other_tokenizer, monkeypatch):
    """Logits are formed at most ``chunk_size`` rows at a time, and under checkpointing no [*, V]
    logits stay saved for backward (the full path, for contrast, keeps several per row)."""
    import taid_vlm.train.cross_step as cs

    al = Aligner("byte_aligned", tiny_tokenizer, other_tokenizer)
    batch, ts, tt = _batch(al, [TEXT, TEXT + " And 7 more.", "There are 12 shapes."], other_tokenizer, tiny_tokenizer)
    t = _rows(len(tt), len(tiny_tokenizer), 12, 1, tt)
    sizes = []
    real = cs.rows_logits

    def spy(rows):
        at = real(rows)
        return lambda idx: (sizes.append(int(idx.numel())), at(idx))[1]

    monkeypatch.setattr(cs, "rows_logits", spy)
    saved = {}
    for fused in (True, False):
        s = _rows(len(ts), len(other_tokenizer), 8, 0, ts, grad=True)
        big = []

        def pack(x, big=big):
            if x.dim() == 2 and x.shape[-1] in (len(tiny_tokenizer), len(other_tokenizer)):
                big.append(x.shape[0])
            return x

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
            out = cs.cross_tokenizer_losses(s, t, batch, get_loss("taid", t=0.5), fused=fused, chunk_size=4)
        out["loss"].backward()
        saved[fused] = sum(big)
        if fused:
            assert max(sizes) <= 4 and len(ts) > 4
    assert saved[True] == 0 and saved[False] >= len(ts)
