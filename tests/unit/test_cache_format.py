"""Teacher cache pieces: top-k rows, densification, fingerprints, shard round trip."""

from __future__ import annotations

import math

import pytest
import torch

from taid_vlm.cache.format import compare_fingerprints, hash_path, read_shard, write_shard
from taid_vlm.cache.reader import dense_logprobs
from taid_vlm.cache.writer import topk_rows


def test_topk_rows_and_dense_roundtrip():
    torch.manual_seed(0)
    logits = torch.randn(5, 11)
    rows = topk_rows(logits, k=4, dtype=torch.float32)
    logp = torch.log_softmax(logits, -1)
    assert torch.allclose(rows["rest_mass"], 1 - logp.topk(4, -1).values.exp().sum(-1), atol=1e-6)
    dense = dense_logprobs(rows["topk_ids"], rows["topk_logprobs"], rows["rest_mass"], 11)
    # A proper distribution: the kept mass exactly, the rest spread evenly over the 7 others.
    assert torch.allclose(dense.exp().sum(-1), torch.ones(5), atol=1e-5)
    other = torch.ones(5, 11, dtype=torch.bool).scatter_(1, rows["topk_ids"].long(), False)
    spread = dense.exp()[other].view(5, 7)
    assert torch.allclose(spread, (rows["rest_mass"] / 7)[:, None].expand(5, 7), atol=1e-6)
    assert torch.allclose(dense.gather(1, rows["topk_ids"].long()), logp.gather(1, rows["topk_ids"].long()))


def test_full_k_is_exact():
    logits = torch.randn(3, 6)
    rows = topk_rows(logits, k=6, dtype=torch.float32)
    dense = dense_logprobs(rows["topk_ids"], rows["topk_logprobs"], rows["rest_mass"], 6)
    assert torch.allclose(dense, torch.log_softmax(logits, -1), atol=1e-6)


def test_bytes_per_token_at_k64_within_goal(tmp_path):
    rows = topk_rows(torch.randn(1000, 512), k=64, dtype=torch.float16)
    rows["targets"] = torch.zeros(1000, dtype=torch.int32)
    rows["offsets"] = torch.tensor([0, 1000])
    path = tmp_path / "s.safetensors"
    write_shard(path, ["a"], rows)
    per_token = path.stat().st_size / 1000
    assert per_token <= 400, per_token
    ids, back = read_shard(path)
    assert ids == ["a"] and torch.equal(back["topk_ids"], rows["topk_ids"])


def test_fingerprint_helpers(tmp_path):
    (tmp_path / "a.json").write_text("[1]")
    h1 = hash_path(tmp_path / "a.json")
    (tmp_path / "a.json").write_text("[2]")
    assert hash_path(tmp_path / "a.json") != h1
    stored = {"data": "x", "tokenizer": "t", "teacher": "big"}
    assert compare_fingerprints(stored, {"data": "y", "tokenizer": "t", "teacher": ""}) == ["data"]


def test_exhausted_rest_mass_stays_finite():
    ids = torch.tensor([[0, 1]])
    lp = torch.log(torch.tensor([[0.5, 0.5]]))
    dense = dense_logprobs(ids, lp, torch.zeros(1), 4)
    assert torch.isfinite(dense).all() and not math.isnan(float(dense.sum()))


@pytest.mark.parametrize("k", [1, 3])
def test_topk_ids_are_the_largest(k):
    logits = torch.tensor([[0.1, 3.0, -1.0, 2.0]])
    rows = topk_rows(logits, k=k, dtype=torch.float32)
    assert rows["topk_ids"][0].tolist() == [1, 3, 0][:k]
