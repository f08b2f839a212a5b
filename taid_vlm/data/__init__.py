"""Data: readers, image loading, chat templating with assistant-only labels, synthetic set."""

from taid_vlm.data.types import Sample, SkipSample

__all__ = ["Sample", "SkipSample"]
