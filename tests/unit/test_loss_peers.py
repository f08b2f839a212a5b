"""The peer rows of bench_losses: same inputs, same divergence, a missing peer skipped with a note."""

import importlib.util

import pytest
import torch

from tests.conftest import load_eval_script


def test_ours_and_full_rows_agree_on_the_same_inputs():
    peers = load_eval_script("loss_peers")
    for group in peers.GROUPS:
        x = peers.inputs(24, 50, 8, "cpu")
        full = peers.make_step(group, "full", *x)
        value_full, g_full = full(), x[1].grad.clone()
        value_fused, g_fused = peers.make_step(group, "fused", *x)(), x[1].grad.clone()
        assert value_fused == pytest.approx(value_full, rel=1e-5)
        torch.testing.assert_close(g_fused, g_full, atol=1e-6, rtol=1e-4)


def test_liger_jsd_matches_our_gjsd():
    pytest.importorskip("liger_kernel")
    peers = load_eval_script("loss_peers")
    x = peers.inputs(24, 50, 8, "cpu")
    ours, g_ours = peers.make_step("jsd", "fused", *x)(), x[0].grad.clone()
    liger, g_liger = peers.make_step("jsd", "liger", *x, compiled=False)(), x[0].grad.clone()
    assert liger == pytest.approx(ours, rel=1e-5)  # same divergence, same mean over tokens
    torch.testing.assert_close(g_liger, g_ours, atol=1e-6, rtol=1e-4)


def test_missing_peer_gives_a_note(monkeypatch):
    peers = load_eval_script("loss_peers")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "liger_kernel" else real(n, *a))
    assert "liger_kernel is not installed" in peers.missing("liger")
    assert peers.missing("fused") is None
    with pytest.raises(ValueError, match="group"):
        peers.make_step("nope", "full", *peers.inputs(2, 5, 3, "cpu"))
