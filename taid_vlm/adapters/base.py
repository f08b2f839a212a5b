"""The common view of a model family that the distillation step and evaluation use.

An adapter owns a model plus its tokenizer/processor and knows the family's rules (chat
template, image tokens, extra inputs such as Qwen2-VL's ``image_grid_thw``). It never knows the
trainer. The distillation step only calls:

- ``encode(sample, max_length)``  -> one unbatched encoding (``input_ids``, ``labels`` with -100
  outside assistant tokens, ``attention_mask`` and the family's image tensors);
- ``collate(encodings)``          -> a padded batch;
- ``response_hidden(batch)``      -> hidden states at the positions that predict response tokens
  and the LM-head weight, so logits are only ever formed for those positions;
- ``generate(samples, ...)``      -> decoded greedy answers, for evaluation.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from taid_vlm.data.types import IGNORE_INDEX, Sample


@dataclass
class ResponseHidden:
    """Hidden states at the positions that predict assistant-response tokens.

    Attributes:
        hidden: ``[N, H]`` final-norm hidden states (model dtype), ordered by (sample, position);
            row i predicts ``targets[i]``.
        weight: ``[V, H]`` LM-head weight, already cut to the tokenizer's length ``V`` (padded
            vocabulary rows removed), so softmax over it equals excluding the pad columns.
        targets: ``[N]`` int64 response token ids (the labels, shifted).
        sample_index: ``[N]`` int64 index of the sample within the batch for each row.
        bias: ``[V]`` LM-head bias or ``None``.
        logit_softcap: final logit soft-capping (Gemma-style) or ``None``; when set, logits are
            ``cap * tanh(z / cap)`` and the fused linear path cannot be used.
        logit_scale: multiplier applied to logits (Cohere-style), 1.0 for most models.
    """

    hidden: torch.Tensor
    weight: torch.Tensor
    targets: torch.Tensor
    sample_index: torch.Tensor
    bias: torch.Tensor | None = None
    logit_softcap: float | None = None
    logit_scale: float = 1.0

    @property
    def plain_linear(self) -> bool:
        """True when logits are exactly ``hidden @ weight.T`` (fused path allowed)."""
        return self.bias is None and self.logit_softcap is None and self.logit_scale == 1.0

    def logits(self) -> torch.Tensor:
        """``[N, V]`` logits for the response positions only."""
        z = nn.functional.linear(self.hidden, self.weight, self.bias) * self.logit_scale
        if self.logit_softcap is not None:
            z = self.logit_softcap * torch.tanh(z / self.logit_softcap)
        return z


def response_positions(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions whose hidden state predicts a response token.

    Args:
        labels: ``[B, L]`` with ``IGNORE_INDEX`` outside assistant tokens.
    Returns:
        ``(batch_idx [N], pos_idx [N])`` such that ``hidden[batch_idx, pos_idx]`` predicts
        ``labels[batch_idx, pos_idx + 1]``; ordered by sample then position.
    """
    shifted = labels[:, 1:]
    b, p = torch.nonzero(shifted != IGNORE_INDEX, as_tuple=True)
    return b, p


def gather_response_hidden(hidden: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Pick the rows of ``hidden [B, L, H]`` that predict response tokens.

    Returns ``(rows [N, H], targets [N], sample_index [N])``.
    """
    b, p = response_positions(labels)
    return hidden[b, p], labels[b, p + 1], b


class Adapter(ABC):
    """A model family behind the common view described in the module docstring.

    Attributes set by subclasses: ``model`` (``nn.Module``), ``tokenizer`` (HF tokenizer),
    ``processor`` (HF processor or ``None`` for text models), ``supports_images`` (bool),
    ``name`` (registry name of the family).
    """

    name: str = "base"
    supports_images: bool = False
    model: nn.Module
    tokenizer: Any
    processor: Any = None

    @property
    def vocab_size(self) -> int:
        """The tokenizer's length: logits are compared over this many columns only."""
        return len(self.tokenizer)

    @abstractmethod
    def encode(self, sample: Sample, max_length: int) -> dict[str, torch.Tensor]:
        """Encode one sample with this family's template and processor.

        Returns unbatched tensors: ``input_ids [L]``, ``attention_mask [L]``, ``labels [L]``
        (-100 except the assistant-response tokens, end-of-turn token included) and the family's
        image inputs. Raises ``SkipSample`` (e.g. ``response_truncated`` when truncation to
        ``max_length`` would cut a response, ``corrupt_image``).
        """

    @abstractmethod
    def collate(self, encodings: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Pad and stack encodings into a batch (``labels`` padded with -100)."""

    @abstractmethod
    def response_hidden(self, batch: dict[str, torch.Tensor]) -> ResponseHidden:
        """Run the model body on ``batch`` and return hidden states at response positions only."""

    @abstractmethod
    def generate(self, samples: list[Sample], max_new_tokens: int = 32, **gen_kwargs: Any) -> list[str]:
        """Greedy-decode an answer for each sample's prompt (all turns up to the last assistant
        turn, which is dropped if present); returns the decoded new text, special tokens removed."""

    def parts(self) -> dict[str, nn.Module]:
        """Trainable parts by name (``vision``, ``projector``, ``lm``) for per-part LR/freezing."""
        return {"lm": self.model}

    def save(self, output_dir: str) -> None:
        """``save_pretrained`` the model plus tokenizer/processor (safetensors)."""
        self.model.save_pretrained(output_dir, safe_serialization=True)
        (self.processor or self.tokenizer).save_pretrained(output_dir)
