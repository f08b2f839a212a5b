"""The composed student as a native transformers LLaVA model, and back.

``TaidVLMForConditionalGeneration`` with an ``hf`` vision tower, the ``mlp`` projector (hidden
size = the LM's) and any HF causal LM is, weight for weight, a ``LlavaForConditionalGeneration``:
the pruned tower is LLaVA's ``vision_tower`` (its last kept block is ``vision_feature_layer=-1``),
the projector's two linears are ``multi_modal_projector.linear_1/linear_2`` (exact GELU between
them, as LLaVA's ``gelu``), the LM body is ``language_model`` and its head ``lm_head``. Saved that
way, the student loads with ``AutoModelForImageTextToText`` / ``AutoProcessor`` /
``pipeline("image-text-to-text")`` in a process that never imports taid_vlm, and any server that
serves LLaVA (vLLM, SGLang) serves it.

Other layouts (timm / open_clip towers, the ``pixel_shuffle_mlp`` projector) have no
transformers class; ``native_llava_blocker`` says why, and ``adapters.composed`` then saves the
taid_vlm classes with their code beside the weights (``auto_map``, see ``remote_code``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import AutoModelForCausalLM, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

from taid_vlm.models.configuration import TaidVLMConfig
from taid_vlm.models.modeling import TaidVLMForConditionalGeneration
from taid_vlm.models.processing import TaidVLMProcessor
from taid_vlm.models.vision_hf import _vision_config


def _extra_tokens(tower: nn.Module) -> int:
    """Tokens the tower emits before its patch tokens (CLIP's class token: 1; SigLIP: 0)."""
    emb = getattr(tower.model, "embeddings", None)
    positions = getattr(emb, "num_positions", None)
    return -1 if positions is None else int(positions) - tower.num_tokens


def native_llava_blocker(model: TaidVLMForConditionalGeneration) -> str | None:
    """``None`` when ``model`` maps exactly onto ``LlavaForConditionalGeneration``, else the reason."""
    cfg = model.config
    if cfg.vision["backend"] != "hf":
        return (f"the {cfg.vision['backend']} vision tower has no transformers class (use vision.backend: hf, "
                "e.g. a SigLIP or CLIP vision config)")
    if cfg.projector["type"] != "mlp":
        return (f"the {cfg.projector['type']} projector has no transformers LLaVA counterpart "
                "(use projector.type: mlp)")
    hidden = cfg.projector.get("hidden_size")
    if hidden not in (None, cfg.text_config.hidden_size):
        return (f"projector.hidden_size={hidden} differs from the LM's hidden size {cfg.text_config.hidden_size}, "
                "which LLaVA's projector uses (leave projector.hidden_size unset)")
    if _extra_tokens(model.vision_tower) not in (0, 1):
        return "the hf vision tower's prefix tokens are neither none (SigLIP) nor one class token (CLIP)"
    try:
        AutoModelForCausalLM._model_mapping[type(cfg.text_config)]
    except KeyError:
        return f"the LM {cfg.text_config.model_type!r} has no AutoModelForCausalLM class"
    return None


def llava_config(model: TaidVLMForConditionalGeneration) -> LlavaConfig:
    """The ``LlavaConfig`` whose model holds exactly ``model``'s weights."""
    cfg = model.config
    vision = _vision_config(cfg.vision["config"]).to_dict()
    vision["num_hidden_layers"] = len(model.vision_tower.model.encoder.layers)  # pruned after feature_layer
    if "vision_use_head" in vision:
        vision["vision_use_head"] = False  # the pooled head is never used (and was dropped)
    cls_token = _extra_tokens(model.vision_tower) == 1
    return LlavaConfig(
        vision_config=vision, text_config=cfg.text_config.to_dict(), image_token_index=cfg.image_token_id,
        image_seq_length=cfg.num_image_tokens, projector_hidden_act="gelu", vision_feature_layer=-1,
        vision_feature_select_strategy="default" if cls_token else "full", multimodal_projector_bias=True,
        tie_word_embeddings=bool(getattr(cfg.text_config, "tie_word_embeddings", False)),
        pad_token_id=cfg.pad_token_id, bos_token_id=cfg.bos_token_id, eos_token_id=cfg.eos_token_id,
    )


def to_llava(model: TaidVLMForConditionalGeneration, processor: TaidVLMProcessor
             ) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """The same network as a transformers LLaVA model + ``LlavaProcessor`` (ValueError if not expressible)."""
    reason = native_llava_blocker(model)
    if reason:
        raise ValueError(f"this student cannot be saved as a native LLaVA model: {reason}")
    lcfg = llava_config(model)
    dtype = next(model.parameters()).dtype
    llava = LlavaForConditionalGeneration(lcfg).to(dtype).eval()
    vision_state = model.vision_tower.model.state_dict()
    # LLaVA reads hidden_states, so the (dropped) post-norm/head stay unused: keep its fresh ones.
    missing, unexpected = llava.model.vision_tower.load_state_dict(vision_state, strict=False)
    if unexpected or any(not k.startswith(("post_layernorm.", "head.")) for k in missing):
        raise ValueError(f"vision weights do not map onto LLaVA's tower: missing {missing[:4]}, "
                         f"unexpected {unexpected[:4]}")
    net = model.projector.net
    proj = llava.model.multi_modal_projector
    proj.linear_1.load_state_dict(net[0].state_dict())
    proj.linear_2.load_state_dict(net[2].state_dict())
    llava.model.language_model.load_state_dict(model.language_model.base_model.state_dict())
    llava.lm_head.load_state_dict(model.language_model.get_output_embeddings().state_dict())
    llava.generation_config = model.generation_config
    cls_token = lcfg.vision_feature_select_strategy == "default"
    proc = LlavaProcessor(
        image_processor=processor.image_processor, tokenizer=processor.tokenizer,
        patch_size=lcfg.vision_config.patch_size, vision_feature_select_strategy=lcfg.vision_feature_select_strategy,
        num_additional_image_tokens=1 if cls_token else 0, image_token=processor.image_token,
        chat_template=processor.chat_template or processor.tokenizer.chat_template,
    )
    return llava, proc


def from_llava(llava: LlavaForConditionalGeneration, processor: Any
               ) -> tuple[TaidVLMForConditionalGeneration, TaidVLMProcessor]:
    """A transformers LLaVA model (e.g. a student saved by ``to_llava``) as the composed student,
    to continue training it; ValueError when its layout has no composed equivalent."""
    from taid_vlm.models.factory import build_processor

    cfg = llava.config
    if not isinstance(cfg.vision_feature_layer, int) or cfg.projector_hidden_act != "gelu" \
            or not cfg.multimodal_projector_bias:
        raise ValueError("only LLaVA models with one vision_feature_layer, a gelu projector with bias map onto "
                         "the composed student; use family: llava (as a teacher) instead")
    vcfg = cfg.vision_config
    ip = processor.image_processor
    size = int(vcfg.image_size)
    vision = {"backend": "hf", "config": vcfg.to_dict(), "feature_layer": cfg.vision_feature_layer,
              "image_size": size, "image_mean": list(ip.image_mean), "image_std": list(ip.image_std)}
    image_token = getattr(processor, "image_token", "<image>")
    tcfg = TaidVLMConfig(vision=vision, projector={"type": "mlp"}, text_config=cfg.text_config,
                         image_token_id=cfg.image_token_id, image_token=image_token,
                         pad_token_id=cfg.pad_token_id, bos_token_id=cfg.bos_token_id, eos_token_id=cfg.eos_token_id)
    lm = AutoModelForCausalLM.from_config(cfg.text_config)
    lm.base_model.load_state_dict(llava.model.language_model.state_dict())
    lm.get_output_embeddings().load_state_dict(llava.lm_head.state_dict())
    model = TaidVLMForConditionalGeneration(tcfg, language_model=lm)
    extra = _extra_tokens(model.vision_tower)
    if (extra == 1) != (cfg.vision_feature_select_strategy == "default"):
        raise ValueError(f"vision_feature_select_strategy={cfg.vision_feature_select_strategy!r} with {extra} prefix "
                         "tokens keeps tokens the composed student drops; use family: llava instead")
    model.vision_tower.model.load_state_dict(llava.model.vision_tower.state_dict(), strict=False)
    with torch.no_grad():
        model.projector.net[0].load_state_dict(llava.model.multi_modal_projector.linear_1.state_dict())
        model.projector.net[2].load_state_dict(llava.model.multi_modal_projector.linear_2.state_dict())
    model.generation_config = llava.generation_config
    model.to(llava.dtype)
    proc = build_processor(model.config, processor.tokenizer)
    proc.image_processor = ip
    proc.chat_template = processor.chat_template
    return model, proc
