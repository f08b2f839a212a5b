"""Perplexity on held-out responses: only assistant tokens count, for any adapter.

Uses the adapter's own ``encode`` / ``collate`` / ``response_hidden``, so the response positions
and the vocabulary (padded LM-head rows cut) are exactly those the distillation step trains on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from taid_vlm.data.types import Sample, SkipSample


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _device(adapter: Any) -> torch.device:
    try:
        return next(adapter.model.parameters()).device
    except (StopIteration, AttributeError):
        return torch.device("cpu")


def perplexity(adapter: Any, samples: Sequence[Sample], *, batch_size: int = 8, max_length: int = 2048,
               progress: bool = False) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Token-weighted response perplexity ``exp(sum NLL / number of response tokens)``.

    Args:
        adapter: an ``Adapter`` (``encode``, ``collate``, ``response_hidden``, ``model``).
        samples: conversations whose assistant turns are scored.
        batch_size: samples per forward pass.
        max_length: token limit per sample (``encode`` drops whole turns beyond it; a sample whose
            first response does not fit is skipped and counted).
        progress: show a progress bar over the batches (on stderr).
    Returns:
        ``(scores, per_sample)``: scores ``perplexity``, ``nll`` (mean per token, nats),
        ``num_tokens``, ``num_skipped``; per sample ``id``, ``nll`` (mean), ``num_tokens``, or
        ``skipped`` with the reason.
    """
    device = _device(adapter)
    total_nll, total_tok = 0.0, 0
    per: list[dict[str, Any]] = []
    model = getattr(adapter, "model", None)
    was_training = bool(model is not None and model.training)
    if model is not None:
        model.eval()
    try:
        from taid_vlm.evaluation.runner import batch_starts

        for start in batch_starts(len(samples), batch_size, progress, "eval text"):
            chunk = samples[start:start + batch_size]
            encs, kept = [], []
            for s in chunk:
                try:
                    encs.append(adapter.encode(s, max_length))
                    kept.append(s)
                except SkipSample as skip:
                    per.append({"id": s.id, "skipped": skip.reason, "detail": skip.detail})
            if not encs:
                continue
            with torch.no_grad():
                rh = adapter.response_hidden(_to_device(adapter.collate(encs), device))
                # fp32 so a bf16 model's perplexity is not rounded before the exp.
                nll = torch.nn.functional.cross_entropy(rh.logits().float(), rh.targets, reduction="none")
            sums = torch.zeros(len(kept), dtype=torch.float64).index_add_(0, rh.sample_index.cpu(), nll.double().cpu())
            counts = torch.bincount(rh.sample_index.cpu(), minlength=len(kept))
            for s, v, c in zip(kept, sums.tolist(), counts.tolist()):
                per.append({"id": s.id, "nll": v / c if c else float("nan"), "num_tokens": int(c)})
            total_nll += float(sums.sum())
            total_tok += int(counts.sum())
    finally:
        if was_training:
            model.train()
    mean = total_nll / total_tok if total_tok else float("nan")
    scores = {"perplexity": math.exp(mean) if total_tok else float("nan"), "nll": mean,
              "num_tokens": float(total_tok), "num_skipped": float(sum(1 for p in per if "skipped" in p))}
    return scores, per
