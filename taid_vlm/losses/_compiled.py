"""TAID's chunk kernel compiled by torch.compile: three passes over the row instead of about a dozen.

The eager kernel (``taid.taid_value_and_grad``) runs one torch op at a time over ``[C, V]``: the
interpolation, a log-softmax, and per row block two exps, two row dots and a subtraction, each a
pass over memory, three exps per value. At Qwen's 151,936-row vocabulary that kernel cost as much
as the teacher's LM head on this CPU (about 350 ms per 256 rows). Inductor fuses the arithmetic
into three passes with two exps per value (the mix's row max; e = exp(mix - max) with every row
sum, e kept in place; the gradient), and on the CPU we call it on a few rows at a time so that a
row block's student and teacher rows stay in the cache between those passes. No library ships TAID's kernel (Liger-Kernel and Cut
Cross-Entropy fuse other losses), hence our own, written as plain torch ops for Inductor.

The compiled path is used only where it pays (``use_compiled``): a chunk of at least
``MIN_ELEMENTS`` values, outside another ``torch.compile`` trace, and not switched off with
``TAID_VLM_COMPILE=0``. If compiling fails (no C++ compiler, no Triton), the eager kernel takes
over for the rest of the process after one warning: the loss never depends on the compiler.
"""

from __future__ import annotations

import logging
import os
import warnings

import torch

# Below ~4M values per chunk (e.g. 27 rows at V = 151,936, 131 at 32,000) the eager kernel is fast
# enough and the tests, the demo (V = 512) and small vocabularies never wait for a compile.
MIN_ELEMENTS = 1 << 22
# CPU row block: the student and teacher rows of one block (2 x rows x V fp32) fit in about 8 MiB,
# so the kernel's second and third passes read them from the cache, not from memory.
CPU_BLOCK_BYTES = 8 << 20

_STATE: dict[str, object] = {"fn": None, "failed": False}


def _taid_stats(lq: torch.Tensor, tb: torch.Tensor, t: torch.Tensor, inv_temp: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # mix = (1 - t) * log q + t * teacher / T: the eager kernel's logit-space interpolation (the
    # student side is shift-invariant per row, so its log-probs stand in for its tempered logits).
    # With e = exp(mix - max) and z = sum(e): p_t = e / z and log p_t = mix - max - log z, so
    # H(p_t, q) = -sum(e * log q) / z and KL = sum(e * (mix - max)) / z - log z + H(p_t, q): all
    # three sums come from the pass that computes e, and e is kept (in tb) for the gradient.
    mix = torch.lerp(lq, tb * inv_temp, t)
    d = mix - mix.amax(-1, keepdim=True)
    e = d.exp()
    z = e.sum(-1)
    ce = -(e * lq).sum(-1) / z
    kl = (e * d).sum(-1) / z - z.log() + ce
    tb.copy_(e)
    return kl, ce, z


def _taid_grad(lq: torch.Tensor, tb: torch.Tensor, z: torch.Tensor, inv_temp: torch.Tensor) -> None:
    # (q - p_t) / T with p_t = e / z, where e (and before it the teacher's logits) was.
    tb.copy_((lq.exp() - tb / z.unsqueeze(-1)) * inv_temp)


def _compiled(device: torch.device):
    """The two compiled graphs, compiled and run once on a small input first: a machine that cannot
    compile (no C++ compiler, no Triton) fails here, before any chunk's buffer is touched."""
    if _STATE["fn"] is None:
        # Two graphs, so that e is stored once (by the first) instead of recomputed in the second:
        # two exps per value in all. dynamic: one compiled kernel for every row count and
        # vocabulary; t and 1/T are 0-d tensors so that TAID's moving t does not recompile either.
        fns = tuple(torch.compile(f, dynamic=True, fullgraph=True) for f in (_taid_stats, _taid_grad))
        # On a CPU-only machine with a CUDA build of torch, importing the C++ toolchain logs "No CUDA
        # runtime is found" at warning level, which says nothing about this run.
        log = logging.getLogger("torch.utils.cpp_extension")
        level = log.level
        log.setLevel(logging.ERROR)
        try:
            x, one = torch.zeros(2, 16, device=device), torch.ones((), device=device)
            fns[1](x, x.clone(), fns[0](x, x.clone(), one, one)[2], one)
        finally:
            log.setLevel(level)
        _STATE["fn"] = fns
    return _STATE["fn"]


def use_compiled(x: torch.Tensor) -> bool:
    """Whether ``taid_rows`` would run the compiled kernel on a ``[C, V]`` chunk ``x``."""
    if _STATE["failed"] or os.environ.get("TAID_VLM_COMPILE", "1") == "0":
        return False
    if x.numel() < MIN_ELEMENTS or x.device.type not in ("cpu", "cuda"):
        return False
    return not torch.compiler.is_compiling()


def block_rows(vocab: int, device: torch.device) -> int:
    """Rows per call of the compiled kernel: a cache-sized block on the CPU, the whole chunk on a GPU."""
    if device.type != "cpu":
        return 1 << 30
    return max(torch.get_num_threads(), CPU_BLOCK_BYTES // (8 * max(vocab, 1)))


def taid_rows(lq: torch.Tensor, tb: torch.Tensor, t: float, temperature: float,
              need_grad: bool) -> tuple[torch.Tensor, torch.Tensor] | None:
    """TAID's per-row KL and cross-entropy ``[C]`` by the compiled kernel, or None to run the eager one.

    Args:
        lq: ``[C, V]`` fp32 student log-probs at the temperature (read only).
        tb: ``[C, V]`` fp32 raw teacher logits, OVERWRITTEN: by ``(q - p_t) / T`` with ``need_grad``.
        t, temperature: the interpolation parameter and the temperature.
    Returns:
        ``(kl [C], ce [C])`` or None when the compiled path is off or failed (then ``tb`` is untouched).
    """
    if not use_compiled(lq):
        return None
    tt = torch.tensor(float(t), dtype=torch.float32, device=lq.device)
    inv = torch.tensor(1.0 / float(temperature), dtype=torch.float32, device=lq.device)
    rows = block_rows(lq.shape[1], lq.device)
    try:
        stats, grad = _compiled(lq.device)
    except Exception as err:  # noqa: BLE001 - any compiler failure: the eager kernel is always right
        _STATE["failed"] = True
        warnings.warn(f"taid_vlm: torch.compile of the TAID kernel failed ({type(err).__name__}: {err}); "
                      "using the eager kernel for the rest of this process", RuntimeWarning, stacklevel=3)
        return None
    kl, ce = lq.new_empty(lq.shape[0]), lq.new_empty(lq.shape[0])
    for a in range(0, lq.shape[0], rows):
        blk = slice(a, a + rows)
        kl[blk], ce[blk], z = stats(lq[blk], tb[blk], tt, inv)
        if need_grad:
            grad(lq[blk], tb[blk], z, inv)
    return kl, ce
