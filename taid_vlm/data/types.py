"""The one internal sample form every reader produces and every adapter consumes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Label of a position that carries no target (prompt, image slots, padding): the value PyTorch's
# cross-entropy ignores. The one definition; labels, collation, adapters and losses all use it.
IGNORE_INDEX = -100


class SkipSample(Exception):
    """Raised for a record that cannot be used; ``reason`` is a short key counted in the data report.

    Reasons in use: ``missing_image``, ``bad_path``, ``corrupt_image``, ``image_too_large``, ``path_escape``,
    ``empty_answer``, ``no_assistant_turn``, ``unknown_role``, ``bad_text``, ``response_truncated``,
    ``bad_record``.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass
class Sample:
    """One conversation, possibly with images.

    ``messages`` follow the TRL/HF "messages" convention::

        [{"role": "system" | "user" | "assistant",
          "content": [{"type": "text", "text": "..."} | {"type": "image"}, ...]}, ...]

    The i-th ``{"type": "image"}`` block refers to ``images[i]``. Images are references that are
    opened lazily (see ``taid_vlm.data.images.ImageRef``). ``meta`` carries task fields such as
    ``answers`` (VQA) or ``captions`` for evaluation.
    """

    id: str
    messages: list[dict[str, Any]]
    images: list[Any] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def num_images(self) -> int:
        return len(self.images)
