"""Response perplexity: token-weighted mean NLL -> exp, checked against hand-computed logits."""

from __future__ import annotations

import math

import pytest
import torch

from taid_vlm.adapters.base import ResponseHidden
from taid_vlm.data.types import Sample, SkipSample
from taid_vlm.evaluation.text import perplexity

V = 3


class KnownLogitsAdapter:
    """Each sample carries its response logits and targets in ``meta``; the LM head is the identity,
    so ``ResponseHidden.logits()`` returns exactly those logits."""

    supports_images = False

    def __init__(self):
        self.model = torch.nn.Linear(V, V)  # only for its device / train-eval mode
        self.model.train()

    def encode(self, sample, max_length):
        if sample.meta.get("too_long"):
            raise SkipSample("response_truncated", "does not fit")
        return {"logits": torch.tensor(sample.meta["logits"]), "targets": torch.tensor(sample.meta["targets"])}

    def collate(self, encodings):
        index = torch.cat([torch.full((len(e["targets"]),), i) for i, e in enumerate(encodings)])
        return {"logits": torch.cat([e["logits"] for e in encodings]),
                "targets": torch.cat([e["targets"] for e in encodings]), "index": index}

    def response_hidden(self, batch):
        assert not self.model.training  # evaluation runs in eval mode
        return ResponseHidden(hidden=batch["logits"], weight=torch.eye(V), targets=batch["targets"],
                              sample_index=batch["index"])


def _samples():
    ln2, ln3 = math.log(2), math.log(3)
    a = Sample("a", [], meta={"logits": [[0.0, 0.0, 0.0], [ln2, 0.0, 0.0]], "targets": [0, 1]})
    b = Sample("b", [], meta={"logits": [[0.0, ln3, 0.0]], "targets": [1]})
    return [a, b]


@pytest.mark.parametrize("batch_size", [1, 2])
def test_perplexity_is_exp_of_token_mean_nll(batch_size):
    # Sample a: uniform -> p(0) = 1/3, NLL log 3; logits (ln2, 0, 0) -> p(1) = 1/4, NLL log 4.
    # Sample b: logits (0, ln3, 0) -> p(1) = 3/5, NLL log(5/3).
    # Token mean: (log 3 + log 4 + log 5/3) / 3 = log(20) / 3 -> perplexity 20 ** (1/3).
    adapter = KnownLogitsAdapter()
    scores, per = perplexity(adapter, _samples(), batch_size=batch_size)
    assert scores["perplexity"] == pytest.approx(20 ** (1 / 3), rel=1e-6)
    assert scores["nll"] == pytest.approx(math.log(20) / 3, rel=1e-6)
    assert scores["num_tokens"] == 3.0
    assert per[0] == {"id": "a", "nll": pytest.approx(math.log(12) / 2, rel=1e-6), "num_tokens": 2}
    assert per[1]["nll"] == pytest.approx(math.log(5 / 3), rel=1e-6)
    # Token-weighted, not the mean of per-sample perplexities or NLLs.
    assert scores["nll"] != pytest.approx((per[0]["nll"] + per[1]["nll"]) / 2)
    assert adapter.model.training  # mode restored


def test_skipped_samples_are_counted_not_scored():
    samples = [*_samples(), Sample("c", [], meta={"too_long": True})]
    scores, per = perplexity(KnownLogitsAdapter(), samples, batch_size=2)
    assert scores["perplexity"] == pytest.approx(20 ** (1 / 3), rel=1e-6)
    assert scores["num_skipped"] == 1.0
    assert {"id": "c", "skipped": "response_truncated", "detail": "does not fit"} in per


def test_no_tokens_gives_nan():
    scores, _ = perplexity(KnownLogitsAdapter(), [Sample("c", [], meta={"too_long": True})])
    assert math.isnan(scores["perplexity"])
