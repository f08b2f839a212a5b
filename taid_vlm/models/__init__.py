"""The composed TAID-VLM-style student (vision tower -> projector -> causal LM) and factories."""

from __future__ import annotations

from taid_vlm.models.configuration import TaidVLMConfig
from taid_vlm.models.factory import build_composed, build_text_lm
from taid_vlm.models.modeling import TaidVLMForConditionalGeneration
from taid_vlm.models.processing import TaidVLMProcessor

__all__ = [
    "TaidVLMConfig", "TaidVLMForConditionalGeneration", "TaidVLMProcessor", "build_composed", "build_text_lm",
    "register_auto",
]

_REGISTERED = False


def register_auto() -> None:
    """Register the composed model with the Auto classes, so that after ``import taid_vlm``
    ``AutoModelForImageTextToText`` / ``AutoProcessor`` / ``AutoConfig.from_pretrained(dir)`` work."""
    global _REGISTERED
    if _REGISTERED:
        return
    import transformers
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    AutoConfig.register("taid_vlm", TaidVLMConfig, exist_ok=True)
    AutoModelForImageTextToText.register(TaidVLMConfig, TaidVLMForConditionalGeneration, exist_ok=True)
    if hasattr(transformers, "AutoModelForVision2Seq"):
        transformers.AutoModelForVision2Seq.register(TaidVLMConfig, TaidVLMForConditionalGeneration, exist_ok=True)
    AutoProcessor.register(TaidVLMConfig, TaidVLMProcessor, exist_ok=True)
    _REGISTERED = True


register_auto()
