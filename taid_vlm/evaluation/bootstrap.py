"""Bootstrap confidence intervals over evaluation items (questions, images, held-out responses).

One resampling helper for every interval the package reports: a model's mean score, a
token-weighted mean (NLL per token: per-sample means weighted by their token counts), and the
paired difference of two models scored on the same items (the same resampled items for both, so
what the items share cancels out).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _as_array(name: str, values: Sequence[float] | np.ndarray) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{name}: need a non-empty 1-D sequence of per-item values, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: {int((~np.isfinite(arr)).sum())} values are NaN or infinite; "
                         "drop the skipped items before bootstrapping")
    return arr


def bootstrap_ci(values: Sequence[float], baseline: Sequence[float] | None = None, *,
                 weights: Sequence[float] | None = None, n_boot: int = 2000, level: float = 0.95,
                 seed: int = 0) -> dict[str, float]:
    """Percentile bootstrap interval of a (weighted) mean, or of a paired difference of means.

    Args:
        values: ``[N]`` per-item values of one model (e.g. VQA accuracy of each question).
        baseline: ``[N]`` per-item values of another model on the same items, or None. When given,
            the statistic is ``mean(values) - mean(baseline)``, both computed on the same resampled
            items (a paired bootstrap).
        weights: ``[N]`` non-negative item weights (e.g. response tokens per sample, for a
            per-token NLL from per-sample mean NLLs), or None for equal weights. The mean is
            ``sum(w * v) / sum(w)`` (a ratio estimator, resampled as such).
        n_boot: resamples of the N items (with replacement).
        level: coverage of the interval, in (0, 1).
        seed: seed of the resampling (same seed and inputs, same interval).
    Returns:
        ``{"estimate", "low", "high", "n"}``: the statistic on the items as given and the
        ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of its bootstrap distribution.
    """
    v = _as_array("values", values)
    n = v.size
    b = None if baseline is None else _as_array("baseline", baseline)
    if b is not None and b.size != n:
        raise ValueError(f"baseline has {b.size} items but values has {n}; a paired bootstrap needs the same items")
    w = np.ones(n) if weights is None else _as_array("weights", weights)
    if w.size != n or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"weights: need {n} non-negative values with a positive sum")
    if not 0 < level < 1 or n_boot < 1:
        raise ValueError(f"need 0 < level < 1 and n_boot >= 1; got level={level}, n_boot={n_boot}")

    def stat(idx: np.ndarray | slice) -> np.ndarray:
        ws = w[idx]
        # Resamples of all-zero weight are possible only for tiny N; guard the division.
        total = np.maximum(ws.sum(axis=-1), np.finfo(np.float64).tiny)
        out = (ws * v[idx]).sum(axis=-1) / total
        if b is not None:
            out = out - (ws * b[idx]).sum(axis=-1) / total
        return out

    rng = np.random.default_rng(seed)
    # Chunks of resamples keep memory at ~8 MB whatever N and n_boot are.
    rows = max(1, 1_000_000 // n)
    boot = np.concatenate([stat(rng.integers(0, n, size=(min(rows, n_boot - s), n)))
                           for s in range(0, n_boot, rows)])
    lo, hi = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2])
    return {"estimate": float(stat(slice(None))), "low": float(lo), "high": float(hi), "n": int(n)}


def format_ci(ci: dict[str, float], digits: int = 1, signed: bool = False) -> str:
    """``"54.0 [51.1, 56.9]"`` (``"+2.0 [-0.9, 4.8]"`` with ``signed``) from ``bootstrap_ci``'s result."""
    f = f"{{:+.{digits}f}}" if signed else f"{{:.{digits}f}}"
    return f"{f.format(ci['estimate'])} [{f.format(ci['low'])}, {f.format(ci['high'])}]"


def separated(ci: dict[str, float]) -> int:
    """+1 when the interval lies above 0, -1 when below, 0 when it contains 0 (no resolved difference)."""
    return 1 if ci["low"] > 0 else -1 if ci["high"] < 0 else 0
