"""Student-generated sequences as a data-side option that works with every loss.

- ``mixed`` (GKD): with probability ``lam`` per micro-batch, the responses are replaced by the
  student's own generations, which the teacher then scores like any response.
- ``adaptive`` (DistiLLM): a replay buffer of student generations; each micro-batch comes from
  the buffer with probability ``p_use``, which rises by ``p_step`` whenever the validation loss
  fails to improve on its best by more than ``threshold`` (relative).

Generated responses are re-templated for each side by the adapters, so teacher and student see
the same response text and the response-token alignment still holds. Only training
micro-batches are touched: evaluation and validation data are never replaced.
"""

from __future__ import annotations

import copy
import random
import time
from dataclasses import dataclass, field
from typing import Any

from taid_vlm.data.types import Sample


@dataclass
class SamplingState:
    p_use: float = 0.0
    best_val: float | None = None
    buffer: list[tuple[str, str]] = field(default_factory=list)  # (sample id, generated response)


def with_response(sample: Sample, text: str) -> Sample:
    """A copy of ``sample`` whose last assistant turn says ``text`` (later turns dropped)."""
    last = max(i for i, m in enumerate(sample.messages) if m["role"] == "assistant")
    messages = copy.deepcopy(sample.messages[: last + 1])
    messages[last]["content"] = [{"type": "text", "text": text}]
    return Sample(id=sample.id, messages=messages, images=sample.images, meta={**sample.meta, "generated": True})


class StudentSampler:
    """Decides per micro-batch whether to train on student generations, and makes them.

    Args:
        cfg: ``SamplingConfig``; adapter: the student adapter (its ``generate`` is used);
        seed, rank: the decisions are a pure function of (seed, rank, micro-batch index), so a
        resumed run makes the same choices.
        by_id: sample id -> Sample, to rebuild buffered generations after a resume.
    """

    def __init__(self, cfg: Any, adapter: Any, seed: int, rank: int, by_id: dict[str, Sample]) -> None:
        self.cfg, self.adapter, self.seed, self.rank, self.by_id = cfg, adapter, seed, rank, by_id
        self.state = SamplingState(p_use=cfg.p_init)
        self.gen_seconds = 0.0
        self.generated = 0
        self.used = 0

    def _coin(self, micro: int, salt: str) -> random.Random:
        return random.Random(f"{self.seed}/{self.rank}/{micro}/{salt}")

    def _generate(self, samples: list[Sample]) -> list[Sample]:
        t0 = time.perf_counter()
        model = self.adapter.model
        was_training = model.training
        model.eval()  # generate as the model will be used, without dropout
        try:
            texts = self.adapter.generate(
                samples, max_new_tokens=self.cfg.max_new_tokens, do_sample=self.cfg.temperature > 0,
                temperature=self.cfg.temperature if self.cfg.temperature > 0 else None, top_p=self.cfg.top_p,
            )
        finally:
            model.train(was_training)
        self.gen_seconds += time.perf_counter() - t0
        self.generated += len(samples)
        # An empty generation has no response token to distil on: keep the reference instead.
        return [with_response(s, t) if t.strip() else s for s, t in zip(samples, texts)]

    def __call__(self, samples: list[Sample], micro: int) -> list[Sample]:
        """The samples to train on for global micro-batch ``micro``."""
        mode = self.cfg.mode
        if mode == "none" or not samples:
            return samples
        if mode == "mixed":
            if self._coin(micro, "mixed").random() < self.cfg.lam:
                self.used += 1
                return self._generate(samples)
            return samples
        rng = self._coin(micro, "adaptive")
        if rng.random() >= self.state.p_use:
            return samples
        self.used += 1
        fresh = self._generate(samples)
        self.state.buffer.extend((s.id, s.messages[-1]["content"][0]["text"]) for s in fresh
                                 if s.meta.get("generated"))
        del self.state.buffer[: max(0, len(self.state.buffer) - self.cfg.buffer_size)]
        picks = rng.sample(range(len(self.state.buffer)), k=min(len(samples), len(self.state.buffer)))
        return [with_response(self.by_id[self.state.buffer[i][0]], self.state.buffer[i][1]) for i in picks] or fresh

    def on_validation(self, val_loss: float) -> float:
        """DistiLLM's rule: no relative improvement beyond ``threshold`` -> use generations more."""
        best = self.state.best_val
        if best is not None and val_loss > best * (1.0 - self.cfg.threshold):
            self.state.p_use = min(self.cfg.p_max, self.state.p_use + self.cfg.p_step)
        if best is None or val_loss < best:
            self.state.best_val = val_loss
        return self.state.p_use

    def stats(self) -> dict[str, float]:
        out = {"sampling_seconds": self.gen_seconds, "sampled_batches": float(self.used)}
        if self.cfg.mode == "adaptive":
            out.update(sampling_p_use=self.state.p_use, replay_buffer=float(len(self.state.buffer)))
        return out

    def state_dict(self) -> dict[str, Any]:
        s = self.state
        return {"p_use": s.p_use, "best_val": s.best_val, "buffer": [list(x) for x in s.buffer],
                "gen_seconds": self.gen_seconds, "used": self.used}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.state = SamplingState(d["p_use"], d["best_val"], [tuple(x) for x in d["buffer"]])
        self.gen_seconds, self.used = d.get("gen_seconds", 0.0), d.get("used", 0)
