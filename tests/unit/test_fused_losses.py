"""Fused LM-head path == full logits, for every loss, values, gradients and stats."""

import math

import pytest
import torch
import torch.nn.functional as F

from taid_vlm.losses import LOSS_NAMES, fused_distill_loss, fused_linear_losses, get_loss, taid_loss
from taid_vlm.losses.taid import taid_per_token, taid_value_and_grad

# float(loss) on a graph-connected scalar is intended here.
pytestmark = pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad")

N, V, H, HT = 23, 19, 8, 12


def _inputs(seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(N, H, generator=g).to(dtype).requires_grad_()
    w = (torch.randn(V, H, generator=g) * 0.7).to(dtype).requires_grad_()
    th, tw = torch.randn(N, HT, generator=g).to(dtype), torch.randn(V, HT, generator=g).to(dtype)
    labels = torch.randint(0, V, (N,), generator=g)
    mask = torch.rand(N, generator=g) > 0.25
    return h, w, th, tw, labels, mask


def _make(name):
    return get_loss(name, **({"t": 0.55} if name == "taid" else {}))


def _params(loss, h, w):
    return [h, w, *loss.trainable_params()]


@pytest.mark.parametrize("chunk", [1, 4, 64])
@pytest.mark.parametrize("name", LOSS_NAMES)
def test_fused_equals_full(name, chunk):
    h, w, th, tw, labels, mask = _inputs()
    loss = _make(name)
    teacher = (th @ tw.T) if loss.needs_teacher else None
    full = loss(h @ w.T, teacher, mask, labels=labels)
    full_stats = dict(loss.stats)
    g_full = torch.autograd.grad(full, _params(loss, h, w))
    fused = fused_distill_loss(h, w, th if loss.needs_teacher else None, tw if loss.needs_teacher else None,
                               loss=loss, mask=mask, labels=labels, chunk_size=chunk)
    g_fused = torch.autograd.grad(fused, _params(loss, h, w))
    assert float(fused) == pytest.approx(float(full), rel=1e-5, abs=1e-7)
    for a, b in zip(g_full, g_fused):
        torch.testing.assert_close(b, a, atol=2e-6, rtol=1e-4)
    assert set(loss.stats) == set(full_stats)
    for k, v in full_stats.items():
        assert float(loss.stats[k]) == pytest.approx(float(v), rel=1e-5)


@pytest.mark.parametrize("name", ["taid", "fkl", "gjsd"])
def test_fused_linear_losses_total_and_reduction(name):
    h, w, th, tw, labels, mask = _inputs(1)
    loss = _make(name)
    s, t = h @ w.T, th @ tw.T
    ratio = 0.3
    lm = F.cross_entropy(s, labels.masked_fill(~mask, -100), reduction="sum")
    distil = loss(s, t, mask, labels=labels, reduction="sum")
    want = (1 - ratio) * lm + ratio * distil
    g_want = torch.autograd.grad(want * 2.5, [h, w])
    out = fused_linear_losses(h, w, th, tw, loss=loss, mask=mask, labels=labels, reduction="sum",
                              distil_ratio=ratio, chunk_size=5)
    g_out = torch.autograd.grad(out["loss"] * 2.5, [h, w])  # grad_output scaling
    assert float(out["loss"]) == pytest.approx(float(want), rel=1e-5)
    assert float(out["lm_loss"]) == pytest.approx(float(lm), rel=1e-5)
    assert float(out["distil_loss"]) == pytest.approx(float(distil), rel=1e-5)
    assert not out["distil_loss"].requires_grad and not out["lm_loss"].requires_grad
    for a, b in zip(g_want, g_out):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4)
    if name == "taid":
        assert set(out) >= {"taid_kl", "taid_ce"}


def test_fused_sft_without_teacher():
    h, w, _, _, labels, mask = _inputs(2)
    out = fused_linear_losses(h, w, loss="sft", labels=labels, mask=mask, chunk_size=4)
    want = F.cross_entropy(h @ w.T, labels.masked_fill(~mask, -100))
    assert float(out["loss"]) == pytest.approx(float(want), rel=1e-6)
    assert float(out["distil_loss"]) == 0.0
    torch.testing.assert_close(torch.autograd.grad(out["loss"], [w])[0], torch.autograd.grad(want, [w])[0])


def test_fused_with_precomputed_teacher_logits_and_excluded_columns():
    h, w, th, tw, labels, mask = _inputs(3)
    t = th @ tw.T
    t[:, -3:] = -math.inf
    t_copy = t.clone()
    fused = fused_distill_loss(h, w, teacher_logits=t, loss="fkl", mask=mask, chunk_size=6)
    full = get_loss("fkl")(h @ w.T, t, mask)
    assert float(fused) == pytest.approx(float(full), rel=1e-5)
    assert torch.equal(t, t_copy)  # the caller's tensor is not used as a work buffer


def test_fused_bf16_weights_match_full_bf16():
    h, w, th, tw, labels, mask = _inputs(4, torch.bfloat16)
    full = taid_loss(h @ w.T, th @ tw.T, 0.4, mask)
    g_full = torch.autograd.grad(full, [h, w])
    fused = fused_distill_loss(h, w, th, tw, loss="taid", t=0.4, mask=mask, chunk_size=8)
    g_fused = torch.autograd.grad(fused, [h, w])
    assert float(fused) == pytest.approx(float(full), rel=1e-5)
    assert g_fused[1].dtype == torch.bfloat16
    for a, b in zip(g_full, g_fused):
        torch.testing.assert_close(b.float(), a.float(), atol=2e-3, rtol=2e-2)


def test_closed_form_chunk_kernel_equals_autograd():
    g = torch.Generator().manual_seed(5)
    s, t = torch.randn(6, 30, generator=g) * 3, torch.randn(6, 30, generator=g) * 3
    for tt, temp in [(0.3, 1.0), (1.0, 1.0), (0.7, 2.5)]:
        leaf = s.clone().requires_grad_()
        kl, ce = taid_per_token(leaf / temp, t / temp, tt)
        grad = torch.autograd.grad(kl.sum(), leaf)[0]
        kl2, ce2, grad2 = taid_value_and_grad(s.clone(), t.clone(), tt, temp)
        torch.testing.assert_close(kl2, kl.detach(), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ce2, ce, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(grad2, grad, atol=1e-6, rtol=1e-5)


def test_fused_all_masked_and_no_grad_mode():
    h, w, th, tw, labels, _ = _inputs(6)
    out = fused_distill_loss(h, w, th, tw, loss="taid", mask=torch.zeros(N, dtype=torch.bool))
    out.backward()
    assert float(out) == 0.0 and float(h.grad.abs().max()) == 0.0 and float(w.grad.abs().max()) == 0.0
    with torch.no_grad():
        val = fused_distill_loss(h, w, th, tw, loss="fkl", chunk_size=7)
    assert float(val) == pytest.approx(float(get_loss("fkl")(h @ w.T, th @ tw.T)), rel=1e-5)


def test_fallback_for_unfusable_loss():
    h, w, th, tw, labels, mask = _inputs(7)
    loss = _make("rkl")
    loss.fusable = False
    out = fused_linear_losses(h, w, th, tw, loss=loss, mask=mask, labels=labels, distil_ratio=0.5)
    s = h @ w.T
    want = 0.5 * get_loss("rkl")(s, th @ tw.T, mask) + 0.5 * F.cross_entropy(s, labels.masked_fill(~mask, -100))
    assert float(out["loss"]) == pytest.approx(float(want), rel=1e-5)


@pytest.mark.parametrize("kwargs, match", [
    ({"teacher_hidden": None}, "teacher_hidden"),
    ({"teacher_weight": torch.randn(V + 1, HT)}, "teacher_weight"),
    ({"chunk_size": 0}, "chunk_size"),
    ({"distil_ratio": 0.5, "labels": None}, "labels"),
    ({"distil_ratio": 1.5}, "distil_ratio"),
    ({"loss": "nope"}, "valid names"),
    ({"mask": torch.ones(N + 1, dtype=torch.bool)}, "mask"),
    ({"student_weight": torch.randn(V, H + 1)}, "student_weight"),
])
def test_fused_validation(kwargs, match):
    h, w, th, tw, labels, _ = _inputs(8)
    args = {"student_hidden": h, "student_weight": w, "teacher_hidden": th, "teacher_weight": tw,
            "labels": labels, "loss": "taid"}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        fused_linear_losses(args.pop("student_hidden"), args.pop("student_weight"), args.pop("teacher_hidden"),
                            args.pop("teacher_weight"), **args)


def test_auto_chunk_rows_bound_the_chunk_buffer():
    from taid_vlm.losses.fused import AUTO_CHUNK_BYTES, chunk_rows

    assert chunk_rows(100, 151936) == 100  # an int is taken as given
    assert chunk_rows("auto", 151936) == 104  # 64 MiB / (4 B x 151,936) = 110 rows, down to a multiple of 8
    assert chunk_rows("auto", 151936) * 151936 * 4 <= AUTO_CHUNK_BYTES
    assert chunk_rows("auto", 32000) == 256  # the row cap: 520 by the buffer size alone
    assert chunk_rows("auto", 512) == 256  # small vocabularies: the cap
    assert chunk_rows("auto", 10**8) == 16  # the floor
    for bad in (0, -1, "big", 2.5, True):
        with pytest.raises(ValueError, match="chunk_size"):
            chunk_rows(bad, 1000)


def test_fused_auto_chunk_equals_full():
    h, w, th, tw, labels, mask = _inputs(9)
    want = get_loss("taid", t=0.4)(h @ w.T, th @ tw.T, mask)
    got = fused_distill_loss(h, w, th, tw, loss="taid", t=0.4, mask=mask, chunk_size="auto")
    assert float(got) == pytest.approx(float(want), rel=1e-5)


def test_chunk_loop_allocates_its_rows_by_vocab_buffers_once(monkeypatch):
    """Every [rows, V] tensor of the loop lives in two buffers made once per call: more chunks add
    no [rows, V] allocation (on the CPU each fresh one is page-faulted in again)."""
    import taid_vlm.losses._chunk as chunk_mod

    made = []
    real_empty = torch.empty

    def counting_empty(*shape, **kw):
        out = real_empty(*shape, **kw)
        if out.dim() == 2 and out.shape[1] == V:
            made.append(tuple(out.shape))
        return out

    monkeypatch.setattr(chunk_mod.torch, "empty", counting_empty)
    h, w, th, tw, labels, mask = _inputs(10)
    for chunk in (2, 5):
        made.clear()
        fused = fused_distill_loss(h, w, th, tw, loss="taid", t=0.4, mask=mask, chunk_size=chunk)
        assert made == [(chunk, V), (chunk, V)]
        want = get_loss("taid", t=0.4)(h @ w.T, th @ tw.T, mask)
        assert float(fused) == pytest.approx(float(want), rel=1e-5)
