"""A teacher given as top-k log-probs plus the remaining mass (the teacher cache's rows).

The fused loss builds each chunk's ``[C, V]`` teacher log-probs from these rows inside its loop, so
training from a cache never holds an ``[N, V]`` teacher tensor; ``dense()`` is the same
construction over all rows (the full-logits path and the tests use it), hence the same values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class TopKLogprobs:
    """Per-row teacher distribution: k kept log-probs, the rest mass spread evenly over the others.

    Attributes:
        ids: ``[N, k]`` int64 token ids (unique per row).
        logprobs: ``[N, k]`` float log-probs of those ids (fp16 or fp32, as stored).
        rest_mass: ``[N]`` float probability mass of the ``V - k`` other ids.
        vocab_size: ``V``.
    """

    ids: torch.Tensor
    logprobs: torch.Tensor
    rest_mass: torch.Tensor
    vocab_size: int

    def __post_init__(self) -> None:
        if self.ids.dim() != 2 or self.logprobs.shape != self.ids.shape or self.rest_mass.shape != self.ids.shape[:1]:
            raise ValueError(f"TopKLogprobs: expected ids/logprobs [N, k] and rest_mass [N], got "
                             f"{tuple(self.ids.shape)}, {tuple(self.logprobs.shape)}, {tuple(self.rest_mass.shape)}")
        if self.ids.shape[1] > self.vocab_size:
            raise ValueError(f"TopKLogprobs: k = {self.ids.shape[1]} exceeds the vocabulary ({self.vocab_size})")
        self.ids = self.ids.long()
        others = self.vocab_size - self.ids.shape[1]
        # An exhausted remainder would give -inf for tokens the student may still predict; a tiny
        # floor keeps reverse-KL-type losses finite (the loss renormalises anyway).
        self._fill = (torch.log(self.rest_mass.float().clamp_min(1e-12) / others) if others > 0
                      else torch.full(self.rest_mass.shape, -math.inf, device=self.rest_mass.device))
        # -inf can only come from a stored log-prob (the fill is finite when there are other ids, and
        # at k = V every column is a stored one), so one [N, k] check tells which rows need care.
        self.has_neginf = bool(torch.isneginf(self.logprobs).any())

    @property
    def shape(self) -> tuple[int, int]:
        """``(N, V)``: the shape of the dense tensor these rows stand for."""
        return (self.ids.shape[0], self.vocab_size)

    def to(self, device: torch.device | str) -> TopKLogprobs:
        """The same rows on ``device``."""
        return TopKLogprobs(self.ids.to(device), self.logprobs.to(device), self.rest_mass.to(device), self.vocab_size)

    def index_select(self, dim: int, rows: torch.Tensor) -> TopKLogprobs:
        """Rows ``rows [M]`` (int64) as a new ``TopKLogprobs`` (``dim`` must be 0, as for a tensor)."""
        if dim != 0:
            raise ValueError(f"TopKLogprobs.index_select: only rows (dim 0) can be selected, got dim {dim}")
        return TopKLogprobs(self.ids.index_select(0, rows), self.logprobs.index_select(0, rows),
                            self.rest_mass.index_select(0, rows), self.vocab_size)

    def dense(self, start: int = 0, stop: int | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
        """``[stop - start, V]`` fp32 log-probs of rows ``start:stop`` (all rows by default), written
        into ``out`` when given (the fused loop's reused buffer)."""
        stop = self.ids.shape[0] if stop is None else stop
        if out is None:
            out = torch.empty(stop - start, self.vocab_size, dtype=torch.float32, device=self.logprobs.device)
        out.copy_(self._fill[start:stop, None].expand_as(out))
        return out.scatter_(1, self.ids[start:stop], self.logprobs[start:stop].float())
