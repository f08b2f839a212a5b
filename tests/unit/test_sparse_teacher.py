"""The cache's top-k rows enter the fused loss sparsely: same values and gradients as the dense
``[N, V]`` log-probs, for every loss, and ``[N, V]`` is never built."""

import math

import pytest
import torch

from taid_vlm.cache.reader import dense_logprobs
from taid_vlm.cache.writer import topk_rows
from taid_vlm.losses import LOSS_NAMES, TopKLogprobs, fused_linear_losses, get_loss

pytestmark = pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad")

N, V, H, K = 21, 17, 8, 5
TEACHER_LOSSES = [n for n in LOSS_NAMES if n != "sft"]


def _inputs(k=K, seed=0, dtype=torch.float16):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(N, H, generator=g).requires_grad_()
    w = (torch.randn(V, H, generator=g) * 0.7).requires_grad_()
    rows = topk_rows(torch.randn(N, V, generator=g) * 2, k, dtype)
    labels = torch.randint(0, V, (N,), generator=g)
    mask = torch.rand(N, generator=g) > 0.2
    return h, w, rows, labels, mask


def _run(name, h, w, teacher, labels, mask, chunk):
    loss = get_loss(name, **({"t": 0.6} if name == "taid" else {}))
    out = fused_linear_losses(h, w, loss=loss, teacher_logits=teacher, labels=labels, mask=mask, chunk_size=chunk,
                              distil_ratio=0.7)
    grads = torch.autograd.grad(out["loss"], [h, w, *loss.trainable_params()])
    return out, grads


@pytest.mark.parametrize("k", [K, V])
@pytest.mark.parametrize("chunk", [4, 64])
@pytest.mark.parametrize("name", TEACHER_LOSSES)
def test_sparse_chunks_equal_dense_logprobs(name, chunk, k):
    h, w, rows, labels, mask = _inputs(k)
    dense = dense_logprobs(rows["topk_ids"], rows["topk_logprobs"], rows["rest_mass"], V)
    sparse = TopKLogprobs(rows["topk_ids"], rows["topk_logprobs"], rows["rest_mass"], V)
    ref, g_ref = _run(name, h, w, dense, labels, mask, chunk)
    out, g_out = _run(name, h, w, sparse, labels, mask, chunk)
    for key in ref:
        assert float(out[key]) == float(ref[key]), key  # the same chunk values, so the same floats
    for a, b in zip(g_ref, g_out):
        assert torch.equal(a, b)


def test_sparse_dense_construction_and_row_selection():
    _, _, rows, _, _ = _inputs()
    t = TopKLogprobs(rows["topk_ids"], rows["topk_logprobs"], rows["rest_mass"], V)
    full = t.dense()
    assert full.shape == t.shape == (N, V) and full.dtype == torch.float32
    assert torch.allclose(full.exp().sum(-1), torch.ones(N), atol=2e-3)  # fp16 log-probs
    assert torch.equal(t.dense(3, 9), full[3:9])
    sel = torch.tensor([7, 0, 20])
    assert torch.equal(t.index_select(0, sel).dense(), full[sel])
    with pytest.raises(ValueError, match=r"rest_mass \[N\]"):
        TopKLogprobs(rows["topk_ids"], rows["topk_logprobs"], rows["rest_mass"][:3], V)


def test_sparse_excluded_columns_match_dense():
    # A stored -inf log-prob (probability 0 at k = V) is excluded for the student too, both ways.
    h, w, rows, labels, mask = _inputs(V, dtype=torch.float32)
    rows["topk_logprobs"][:, -1] = -math.inf
    dense = dense_logprobs(rows["topk_ids"], rows["topk_logprobs"], rows["rest_mass"], V)
    sparse = TopKLogprobs(rows["topk_ids"], rows["topk_logprobs"], rows["rest_mass"], V)
    assert sparse.has_neginf and bool(torch.isneginf(dense).any())
    ref, g_ref = _run("rkl", h, w, dense, labels, mask, 8)
    out, g_out = _run("rkl", h, w, sparse, labels, mask, 8)
    assert math.isfinite(float(out["loss"])) and float(out["loss"]) == float(ref["loss"])
    assert all(torch.equal(a, b) for a, b in zip(g_ref, g_out))


def test_sparse_path_never_builds_full_rows(monkeypatch):
    # Every densification the loss asks for is one chunk of rows, never all N.
    h, w, rows, labels, mask = _inputs()
    sparse = TopKLogprobs(rows["topk_ids"], rows["topk_logprobs"], rows["rest_mass"], V)
    sizes = []
    orig = TopKLogprobs.dense

    def spy(self, start=0, stop=None, out=None):  # out: the fused loop's reused chunk buffer
        out = orig(self, start, stop, out)
        sizes.append(out.shape[0])
        return out

    monkeypatch.setattr(TopKLogprobs, "dense", spy)
    _run("taid", h, w, sparse, labels, mask, 4)
    assert sizes and max(sizes) <= 4 and sum(sizes) == int(mask.sum())
