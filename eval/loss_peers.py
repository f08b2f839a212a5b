"""Side-by-side rows for ``bench_losses.py --peers``: ours against public fused/blocked losses.

On the same inputs (student ``h [N, H]``, ``w [V, H]``, teacher ``th [N, H]``, ``tw [V, H]``,
labels ``y [N]``) each row runs forward + backward of one loss:

- group ``jsd`` (the divergence Liger-Kernel ships as a chunked distillation loss; beta = 0.5):
  ``full`` = our ``gjsd`` on ``[N, V]`` logits, ``fused`` = ``fused_distill_loss(loss="gjsd")``
  with the default ``chunk_size="auto"``, ``liger`` = ``LigerFusedLinearJSDLoss`` (its torch path:
  rows chunked, ``torch.func`` gradients, ``torch.compile`` as its default; soft loss only);
- group ``ce`` (the LM-loss part): ``full`` = ``F.cross_entropy(h @ w.T, y)``, ``fused`` = our
  fused sft loss, ``cce`` = Cut Cross-Entropy's ``linear_cross_entropy`` (its ``torch_compile``
  path on the CPU, which compiles full logits; the vocabulary-blocked ``cce`` Triton kernel on CUDA).

A peer that is not installed (the optional ``bench`` extra) is skipped with a note.
"""

from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F

GROUPS = {"jsd": ("full", "fused", "liger"), "ce": ("full", "fused", "cce")}
PEER_PACKAGES = {"liger": "liger_kernel", "cce": "cut_cross_entropy"}


def missing(row: str) -> str | None:
    """A note when the row's package is not installed, else None."""
    pkg = PEER_PACKAGES.get(row)
    if pkg and importlib.util.find_spec(pkg) is None:
        return f"{pkg} is not installed (pip install 'taid-vlm[bench]'); row skipped"
    return None


def make_step(group: str, row: str, h, w, th, tw, y, compiled: bool = True):
    """A closure running forward + backward of one row; it returns the loss value (float)."""
    from taid_vlm.losses import fused_distill_loss, get_loss

    if group == "jsd":
        if row == "full":
            def fn():
                with torch.no_grad():
                    t = th @ tw.T
                return get_loss("gjsd", beta=0.5)(h @ w.T, t)
        elif row == "fused":
            def fn():
                return fused_distill_loss(h, w, th, tw, loss="gjsd", beta=0.5)
        else:
            from liger_kernel.chunked_loss import LigerFusedLinearJSDLoss

            liger = LigerFusedLinearJSDLoss(weight_hard_loss=0.0, weight_soft_loss=1.0, beta=0.5, compiled=compiled)

            def fn():
                return liger(h, w, th, tw, y)
    elif group == "ce":
        if row == "full":
            def fn():
                return F.cross_entropy((h @ w.T).float(), y)
        elif row == "fused":
            def fn():
                return fused_distill_loss(h, w, loss="sft", labels=y)
        else:
            from cut_cross_entropy import linear_cross_entropy

            impl = "cce" if h.is_cuda else "torch_compile"

            def fn():
                return linear_cross_entropy(h, w, y, impl=impl)
    else:
        raise ValueError(f"group must be one of {sorted(GROUPS)}, got {group!r}")

    def step() -> float:
        h.grad = w.grad = None
        loss = fn()
        loss.backward()
        return float(loss.detach())

    return step


def inputs(n: int, v: int, hdim: int, device: str, dtype: torch.dtype = torch.float32, seed: int = 0):
    """``(h, w, th, tw, y)`` as in ``bench_losses.run_case`` (student and teacher of width ``hdim``)."""
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, hdim, generator=g).to(device, dtype).requires_grad_()
    w = (torch.randn(v, hdim, generator=g) * 0.05).to(device, dtype).requires_grad_()
    th = torch.randn(n, hdim, generator=g).to(device, dtype)
    tw = (torch.randn(v, hdim, generator=g) * 0.05).to(device, dtype)
    y = torch.randint(0, v, (n,), generator=g).to(device)
    return h, w, th, tw, y
