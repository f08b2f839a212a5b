"""The torch.compile'd TAID kernel (losses/_compiled.py) against the closed form in float64, its
row blocks, its use inside the fused loss, and its fallback to the eager kernel when compiling fails."""

import pytest
import torch

from taid_vlm.losses import _compiled, fused_linear_losses, get_loss
from taid_vlm.losses.taid import taid_per_token, taid_value_and_grad

pytestmark = pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad")


@pytest.fixture
def compiled_small(monkeypatch):
    """The compiled path for test-sized chunks, in row blocks of 4 (so chunks end mid-block)."""
    monkeypatch.setattr(_compiled, "MIN_ELEMENTS", 0)
    monkeypatch.setattr(_compiled, "block_rows", lambda vocab, device: 4)
    monkeypatch.setenv("TAID_VLM_COMPILE", "1")
    monkeypatch.setitem(_compiled._STATE, "failed", False)


def _reference(s, t, tt, temp):
    """KL, H(p_t, q) and d KL / d s in float64 through autograd on the full-logits definition."""
    leaf = s.double().requires_grad_()
    kl, ce = taid_per_token(leaf / temp, t.double() / temp, tt)
    return kl.detach(), ce.detach(), torch.autograd.grad(kl.sum(), leaf)[0]


@pytest.mark.parametrize("tt,temp,logprobs", [(0.4, 1.0, True), (1.0, 1.0, True), (0.7, 2.0, False),
                                              (0.0, 0.5, False), (0.25, 1.0, False)])
def test_compiled_kernel_equals_closed_form(compiled_small, tt, temp, logprobs):
    g = torch.Generator().manual_seed(3)
    raw, teacher = torch.randn(10, 301, generator=g) * 4, torch.randn(10, 301, generator=g) * 4
    s = torch.log_softmax(raw, -1) if logprobs else raw
    assert _compiled.use_compiled(s)
    kl, ce, grad = taid_value_and_grad(s.clone(), teacher.clone(), tt, temp, True, logprobs)
    assert not _compiled._STATE["failed"]  # the compiled kernel ran, no silent fallback
    want_kl, want_ce, want_grad = _reference(raw, teacher, tt, temp)
    torch.testing.assert_close(kl.double(), want_kl, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(ce.double(), want_ce, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(grad.double(), want_grad, atol=1e-7, rtol=1e-5)
    kl2, ce2, none = taid_value_and_grad(s.clone(), teacher.clone(), tt, temp, False, logprobs)
    assert none is None
    torch.testing.assert_close(kl2, kl, atol=1e-6, rtol=0)
    torch.testing.assert_close(ce2, ce, atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", ["taid", "fkl"])
def test_fused_loss_with_compiled_kernel_equals_full_logits(compiled_small, name):
    g = torch.Generator().manual_seed(4)
    h = torch.randn(13, 8, generator=g).requires_grad_()
    w = (torch.randn(97, 8, generator=g) * 0.7).requires_grad_()
    th, tw = torch.randn(13, 12, generator=g), torch.randn(97, 12, generator=g)
    labels, mask = torch.randint(0, 97, (13,), generator=g), torch.rand(13, generator=g) > 0.2
    kwargs = {"t": 0.55} if name == "taid" else {}
    out = fused_linear_losses(h, w, th, tw, loss=get_loss(name, **kwargs), mask=mask, labels=labels,
                              distil_ratio=0.7, chunk_size=6)
    gf = torch.autograd.grad(out["loss"], [h, w])
    assert not _compiled._STATE["failed"]
    s = h @ w.T
    full = (0.7 * get_loss(name, **kwargs)(s, th @ tw.T, mask)
            + 0.3 * torch.nn.functional.cross_entropy(s, labels.masked_fill(~mask, -100)))
    g_full = torch.autograd.grad(full, [h, w])
    assert float(out["loss"]) == pytest.approx(float(full), rel=1e-5)
    for a, b in zip(gf, g_full):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)


def test_compile_failure_falls_back_to_the_eager_kernel(compiled_small, monkeypatch):
    def broken(device):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(_compiled, "_compiled", broken)
    g = torch.Generator().manual_seed(5)
    s, teacher = torch.log_softmax(torch.randn(6, 50, generator=g), -1), torch.randn(6, 50, generator=g)
    with pytest.warns(RuntimeWarning, match="no C.. compiler"):
        kl, ce, grad = taid_value_and_grad(s, teacher.clone(), 0.4, 1.0, True, True)
    assert _compiled._STATE["failed"] and not _compiled.use_compiled(s)  # once failed, eager from then on
    want_kl, want_ce, want_grad = _reference(s, teacher, 0.4, 1.0)
    torch.testing.assert_close(kl.double(), want_kl, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grad.double(), want_grad, atol=1e-7, rtol=1e-5)


def test_gate(monkeypatch):
    monkeypatch.setitem(_compiled._STATE, "failed", False)
    monkeypatch.delenv("TAID_VLM_COMPILE", raising=False)
    small, big = torch.empty(2, 100), torch.empty(1, _compiled.MIN_ELEMENTS)
    assert not _compiled.use_compiled(small) and _compiled.use_compiled(big)
    monkeypatch.setenv("TAID_VLM_COMPILE", "0")
    assert not _compiled.use_compiled(big)
    # CPU row blocks: two fp32 rows of student and teacher per block fit CPU_BLOCK_BYTES, at least one per thread
    rows = _compiled.block_rows(151936, torch.device("cpu"))
    assert rows == max(torch.get_num_threads(), _compiled.CPU_BLOCK_BYTES // (8 * 151936))
    assert _compiled.block_rows(151936, torch.device("cuda")) >= 1 << 20


def test_gpu_check_kernel_row_at_the_real_vocabulary_on_cpu(monkeypatch):
    """gpu_check's compiled_taid_kernel check, here on the CPU: at V = 151,936 the default gate picks
    the compiled kernel (no monkeypatching), and it agrees with the eager one."""
    from tests.conftest import load_eval_script

    monkeypatch.setitem(_compiled._STATE, "failed", False)
    res = load_eval_script("gpu_check").compiled_kernel("cpu", 32)
    assert res["ok"] and not res["compile_failed"], res
    assert res["max_abs_diff"]["grad"] < 1e-5
