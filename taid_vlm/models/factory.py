"""Build the composed student or a text LM from a plain dict (random weights or pretrained parts).

Composed schema (``build_composed``); every key optional unless marked::

    {
      "vision": {
        "backend": "hf" | "timm" | "open_clip",      # default "hf"
        "name": str | None,        # timm/open_clip model name, or a pretrained hf path
        "config": dict | None,     # hf: vision config dict (with model_type); timm: create_model kwargs;
                                   # open_clip: vision_cfg keys (layers, width, patch_size, head_width)
        "pretrained": False,       # load the tower's weights: true (hf path / timm name) or an
                                   # open_clip weights tag string; saved students store false
        "from_model": None,        # a saved composed model's folder (e.g. the teacher's): its tower,
                                   # architecture and weights (other keys may be left out)
        "feature_layer": -1,       # block whose output feeds the projector (-2 as LLaVA-1.5)
        "image_size": 224,         # square input size; the processor resizes to it
        "image_mean": [0.5]*3, "image_std": [0.5]*3,
      },
      "projector": {"type": "mlp" | "pixel_shuffle_mlp", "hidden_size": None},
      "text": {"path": str | None, "config": dict | None},   # one of them; config has model_type
      "image_token": "<image>",   # the tokenizer's image placeholder token
    }

The LM vocabulary is ``text.config.vocab_size`` when given (it may exceed ``len(tokenizer)``:
padded rows), else ``len(tokenizer)``.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel, SiglipImageProcessor

from taid_vlm.models.configuration import DEFAULT_VISION, TaidVLMConfig
from taid_vlm.models.modeling import TaidVLMForConditionalGeneration
from taid_vlm.models.processing import TaidVLMProcessor
from taid_vlm.models.vision import load_pretrained_tower, load_tower_of_model

logger = logging.getLogger(__name__)


def _token_ids(tokenizer: Any) -> dict[str, Any]:
    return {"pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id,
            "bos_token_id": tokenizer.bos_token_id}


def text_config_from_dict(spec: dict[str, Any], tokenizer: Any):
    """An HF config for the LM from ``{"config": {...}}`` (random init), vocab >= len(tokenizer)."""
    if not spec.get("config"):
        raise ValueError("text: set `path` to a pretrained LM or `config` (a dict with model_type)")
    cfg = copy.deepcopy(spec["config"])
    model_type = cfg.pop("model_type", None)
    if model_type is None:
        raise ValueError("text.config: needs `model_type` (e.g. qwen2, llama)")
    cfg.setdefault("vocab_size", len(tokenizer))
    check_vocab(cfg["vocab_size"], len(tokenizer))
    for key, value in _token_ids(tokenizer).items():
        cfg.setdefault(key, value)
    return AutoConfig.for_model(model_type, **cfg)


def build_text_lm(config: dict[str, Any], tokenizer: Any, grow_to_tokenizer: bool = False,
                  **load_kwargs: Any) -> PreTrainedModel:
    """A causal LM from ``{"path": ...}`` (pretrained) or ``{"config": {...}}`` (random weights).

    A dict with ``model_type`` at its top level is taken as the ``config`` itself.
    ``load_kwargs`` go to ``from_pretrained`` / ``from_config`` (``attn_implementation``, ...).
    ``grow_to_tokenizer``: resize a pretrained LM's embeddings when the tokenizer has more tokens.
    """
    spec = {"config": config} if "model_type" in config else config
    if spec.get("path"):
        try:
            model = AutoModelForCausalLM.from_pretrained(spec["path"], **load_kwargs)
        except ValueError as err:
            if "trust_remote_code" not in str(err):
                raise
            raise ValueError(f"{spec['path']!r} needs its own model code: set `trust_remote_code: true` in the "
                             "model's config section, only if you trust that code") from err
    elif spec.get("config") is not None:
        model = AutoModelForCausalLM.from_config(text_config_from_dict(spec, tokenizer), **load_kwargs)
    else:
        raise ValueError("text: set `path` to a pretrained LM or `config` (a dict with model_type)")
    if grow_to_tokenizer and model.get_output_embeddings().weight.shape[0] < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer))  # tokens added on top of the LM's (the image token)
    check_vocab(model.get_output_embeddings().weight.shape[0], len(tokenizer))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def build_processor(config: TaidVLMConfig, tokenizer: Any) -> TaidVLMProcessor:
    """Tokenizer + resize/normalise for ``config.vision`` + ``<image>`` expansion."""
    v = config.vision
    size = int(v["image_size"])
    image_processor = SiglipImageProcessor(
        size={"height": size, "width": size}, image_mean=list(v["image_mean"]), image_std=list(v["image_std"]),
        do_convert_rgb=True,
    )
    return TaidVLMProcessor(image_processor, tokenizer, num_image_tokens=config.num_image_tokens,
                            image_token=config.image_token)


def _resolve_vision(user_vision: dict[str, Any]):
    """``(pretrained tower or None, vision spec that rebuilds the tower offline)``."""
    vision = {**DEFAULT_VISION, **copy.deepcopy(user_vision)}
    tower = None
    if user_vision.get("from_model"):
        # Defaults are not the user's: only keys the user set are checked against the saved tower.
        return load_tower_of_model(copy.deepcopy(user_vision))
    if vision.get("pretrained"):
        tower, vision = load_pretrained_tower(vision)
    elif vision["backend"] == "hf" and not vision.get("config") and vision.get("name"):
        # Architecture of a pretrained tower with random weights; stored so reloading needs no path.
        vision["config"] = AutoConfig.from_pretrained(vision["name"]).to_dict()
    if vision["backend"] == "hf" and "image_size" not in user_vision and vision.get("config"):
        # An hf tower fixes its input size (position embeddings): the processor must resize to it.
        cfg = vision["config"]
        vision["image_size"] = cfg.get("vision_config", cfg).get("image_size", vision["image_size"])
    return tower, vision


def _with_image_token(tokenizer: Any, image_token: str) -> tuple[Any, int]:
    """``(tokenizer, id of image_token)``; a tokenizer without the token gets a copy with it added
    as a special token (a text LM's tokenizer has none; the LM's embeddings grow to match)."""
    token_id = tokenizer.convert_tokens_to_ids(image_token)
    if token_id is not None and token_id != tokenizer.unk_token_id:
        return tokenizer, token_id
    tokenizer = copy.deepcopy(tokenizer)  # never change the caller's (possibly shared) tokenizer
    tokenizer.add_special_tokens({"extra_special_tokens": [image_token]}, replace_extra_special_tokens=False)
    logger.warning("the tokenizer had no %r token: added it as id %d (the LM embeddings grow to cover it)",
                   image_token, len(tokenizer) - 1)
    return tokenizer, tokenizer.convert_tokens_to_ids(image_token)


def build_composed(config: dict[str, Any], tokenizer: Any, **load_kwargs: Any
                   ) -> tuple[TaidVLMForConditionalGeneration, TaidVLMProcessor]:
    """The composed student and its processor from the schema in the module docstring."""
    image_token = config.get("image_token", "<image>")
    tokenizer, image_token_id = _with_image_token(tokenizer, image_token)
    tower, vision = _resolve_vision(config.get("vision") or {})
    text = config.get("text") or {}
    lm = build_text_lm(text, tokenizer, grow_to_tokenizer=True, **load_kwargs) if text.get("path") else None
    text_config = lm.config if lm is not None else text_config_from_dict(text, tokenizer)
    if load_kwargs.get("attn_implementation"):
        text_config._attn_implementation = load_kwargs["attn_implementation"]
    cfg = TaidVLMConfig(vision=vision, projector=config.get("projector"), text_config=text_config,
                        image_token_id=image_token_id, image_token=image_token, **_token_ids(tokenizer))
    model = TaidVLMForConditionalGeneration(cfg, language_model=lm, vision_tower=tower)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model, build_processor(model.config, tokenizer)


def check_vocab(model_vocab_rows: int, tokenizer_len: int) -> None:
    """The LM head must have a row per tokenizer id; extra (padded) rows are fine and are cut off
    before any softmax. Raises ValueError when the head has fewer rows than the tokenizer."""
    if model_vocab_rows < tokenizer_len:
        raise ValueError(
            f"the model's LM head has {model_vocab_rows} rows but the tokenizer has {tokenizer_len} tokens; "
            "use the model's own tokenizer or resize the embeddings (model.resize_token_embeddings)"
        )
