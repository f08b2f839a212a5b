"""Tiny random-weight Hugging Face VLMs of each family, with processors built offline.

``tiny_vlm(variant, tokenizer) -> (model, processor)``: 32-wide, 1-2 layer towers and LMs, 32 px
images, 4-16 image tokens; no download. All families share ONE text tokenizer, ``vlm_tokenizer``:
the local BPE tokenizer plus the union of every family's image/markup tokens (appended after the
BPE vocabulary, so response text tokenizes exactly as with the plain BPE tokenizer). Teacher and
student then pass the start-up tokenizer check whatever the pair. Each family gets a copy carrying
the attribute names its processor reads (``image_token``, ``boi_token``, ...). The LM vocabulary
is padded to a multiple of 64 (as checkpoints do) so the padded-column handling is exercised.
"""

from __future__ import annotations

import copy
from typing import Any

from taid_vlm.models import tiny_hf_templates as T

_QWEN = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
_INTERNVL = ["<img>", "</img>", "<IMG_CONTEXT>", "<video>"]
_IDEFICS = ["<fake_token_around_image>", "<global-img>", "<end_of_utterance>"] + [
    f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)]
_GEMMA = ["<start_of_image>", "<end_of_image>", "<image_soft_token>", "<start_of_turn>", "<end_of_turn>"]
_MISTRAL = ["[IMG]", "[IMG_BREAK]", "[IMG_END]", "[INST]", "[/INST]"]
FAMILY_TOKENS = _QWEN + _INTERNVL + _IDEFICS + _GEMMA + _MISTRAL
# PaliGemma's detection/segmentation tokens: real Gemma vocabularies hold them, and PaliGemmaProcessor
# adds any that are missing (as plain tokens) whenever it is built, also when a saved one is loaded.
# In the shared vocabulary from the start, a saved tiny PaliGemma reloads with the same vocabulary.
LOC_SEG_TOKENS = [f"<loc{i:04d}>" for i in range(1024)] + [f"<seg{i:03d}>" for i in range(128)]

# Attributes each processor reads from its tokenizer (token strings; ``*_id`` added from them).
_ATTRS: dict[str, dict[str, str]] = {
    "llava": {"image_token": "<image>"},
    "llava_next": {"image_token": "<image>"},
    "llava_onevision": {"image_token": "<image>", "video_token": "<video>"},
    "qwen2_vl": {},
    "qwen3_vl": {},
    "internvl": {"start_image_token": "<img>", "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>",
                 "video_token": "<video>"},
    "idefics3": {},
    "paligemma": {"image_token": "<image>"},
    "mistral3": {"image_token": "[IMG]", "image_break_token": "[IMG_BREAK]", "image_end_token": "[IMG_END]"},
    "gemma3": {"image_token": "<image_soft_token>", "boi_token": "<start_of_image>", "eoi_token": "<end_of_image>"},
}
TINY_VARIANTS = ("llava_clip", "llava_siglip", "llava_next", "llava_onevision", "qwen2_vl", "qwen2_5_vl", "qwen3_vl", "internvl", "idefics3", "paligemma",
                 "gemma3", "mistral3")
# Registry family of each tiny variant.
VARIANT_FAMILY = {v: v for v in TINY_VARIANTS} | {"llava_clip": "llava", "llava_siglip": "llava"}
_SIZE = 32  # image side in pixels


def vlm_tokenizer(base: Any) -> Any:
    """A copy of ``base`` with every family's special tokens added (idempotent, order fixed)."""
    tok = copy.deepcopy(base)
    tok.add_special_tokens({"extra_special_tokens": FAMILY_TOKENS}, replace_extra_special_tokens=False)
    tok.add_tokens(LOC_SEG_TOKENS)
    return tok


def family_tokenizer(base: Any, family: str) -> Any:
    """``vlm_tokenizer(base)`` with the named tokens ``family``'s processor reads (``image_token``,
    ``boi_token``, ... and their ``*_id``), registered as transformers 5's model-specific special
    tokens so that they are saved in tokenizer_config.json and a saved teacher reloads with them."""
    tok = vlm_tokenizer(base)
    names = _ATTRS.get(family, {})
    return as_tokenizer_class(tok, type(tok), **names) if names else tok


def as_tokenizer_class(tok: Any, cls: Any, **kwargs: Any) -> Any:
    """``tok`` rebuilt as ``cls`` (some processors insist on e.g. ``Qwen2TokenizerFast``): same
    backend, special tokens and attributes, so the vocabulary and every token id stay the same."""
    out = cls(tokenizer_object=copy.deepcopy(tok.backend_tokenizer), bos_token=tok.bos_token,
              eos_token=tok.eos_token, pad_token=tok.pad_token, unk_token=tok.unk_token,
              extra_special_tokens=list(tok.extra_special_tokens), model_max_length=tok.model_max_length,
              padding_side=tok.padding_side, **kwargs)
    out.chat_template = tok.chat_template
    for name, value in vars(tok).items():
        if name.endswith("_token") or name.endswith("_token_id"):
            setattr(out, name, value)
    return out


def _vocab(tok: Any) -> int:
    return (len(tok) + 63) // 64 * 64 + 64  # padded like real checkpoints (e.g. 151,936 vs 152,064)


def _text(tok: Any, **extra: Any) -> dict[str, Any]:
    return {"vocab_size": _vocab(tok), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8, "max_position_embeddings": 1024,
            "pad_token_id": tok.pad_token_id, "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id,
            "tie_word_embeddings": False, **extra}


def _vit(**extra: Any) -> dict[str, Any]:
    return {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
            "image_size": _SIZE, "patch_size": 8, **extra}


def _llava(variant: str, tok: Any) -> tuple[Any, Any]:
    from transformers import (
        CLIPImageProcessor,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        SiglipImageProcessor,
    )

    clip = variant == "llava_clip"
    vision = {"model_type": "clip_vision_model" if clip else "siglip_vision_model", **_vit()}
    # CLIP has a CLS token that LLaVA's "default" strategy drops; SigLIP has none ("full").
    strategy = "default" if clip else "full"
    cfg = LlavaConfig(vision_config=vision, text_config={"model_type": "llama", **_text(tok)},
                      image_token_index=tok.convert_tokens_to_ids("<image>"), vision_feature_layer=-1,
                      vision_feature_select_strategy=strategy)
    if clip:
        ip = CLIPImageProcessor(size={"shortest_edge": _SIZE}, crop_size={"height": _SIZE, "width": _SIZE})
    else:
        ip = SiglipImageProcessor(size={"height": _SIZE, "width": _SIZE})
    proc = LlavaProcessor(ip, tok, patch_size=8, vision_feature_select_strategy=strategy,
                          num_additional_image_tokens=1 if clip else 0, chat_template=T.LLAVA)
    return LlavaForConditionalGeneration(cfg), proc


# anyres grids (height, width) in px: one 32 px crop, or 1x2 / 2x1 / 2x2 crops, beside the base view.
_PINPOINTS = [[_SIZE, _SIZE], [_SIZE, 2 * _SIZE], [2 * _SIZE, _SIZE], [2 * _SIZE, 2 * _SIZE]]


def _llava_next(tok: Any) -> tuple[Any, Any]:
    from transformers import (
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextImageProcessor,
        LlavaNextProcessor,
    )

    # LLaVA-1.6: CLIP tower (class token dropped: "default"), Mistral LM, anyres crops; 4x4 patches
    # per 32 px crop -> 16 base tokens + the unpadded crop grid with a newline token per row.
    cfg = LlavaNextConfig(vision_config={"model_type": "clip_vision_model", **_vit()},
                          text_config={"model_type": "mistral", **_text(tok)}, image_grid_pinpoints=_PINPOINTS,
                          image_token_index=tok.convert_tokens_to_ids("<image>"), vision_feature_layer=-1,
                          vision_feature_select_strategy="default", image_seq_length=16)
    ip = LlavaNextImageProcessor(size={"shortest_edge": _SIZE}, crop_size={"height": _SIZE, "width": _SIZE},
                                 image_grid_pinpoints=_PINPOINTS)
    proc = LlavaNextProcessor(ip, tok, patch_size=8, vision_feature_select_strategy="default",
                              num_additional_image_tokens=1, chat_template=T.LLAVA_NEXT)
    return LlavaNextForConditionalGeneration(cfg), proc


def _llava_onevision(tok: Any) -> tuple[Any, Any]:
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        LlavaOnevisionImageProcessor,
        LlavaOnevisionProcessor,
        LlavaOnevisionVideoProcessor,
    )

    # SigLIP tower (no class token: "full"), Qwen2 LM, anyres_max_9 crops of 32 px (16 tokens each).
    cfg = LlavaOnevisionConfig(vision_config={"model_type": "siglip_vision_model", **_vit()},
                               text_config={"model_type": "qwen2", **_text(tok)}, image_grid_pinpoints=_PINPOINTS,
                               image_token_index=tok.convert_tokens_to_ids("<image>"),
                               video_token_index=tok.convert_tokens_to_ids("<video>"), vision_feature_layer=-1,
                               vision_feature_select_strategy="full", vision_aspect_ratio="anyres_max_9")
    ip = LlavaOnevisionImageProcessor(size={"height": _SIZE, "width": _SIZE}, image_grid_pinpoints=_PINPOINTS)
    video = LlavaOnevisionVideoProcessor(size={"height": _SIZE, "width": _SIZE})
    proc = LlavaOnevisionProcessor(ip, tok, video, num_image_tokens=16, vision_feature_select_strategy="full",
                                   vision_aspect_ratio="anyres_max_9", chat_template=T.LLAVA_ONEVISION)
    return LlavaOnevisionForConditionalGeneration(cfg), proc


def _qwen(variant: str, tok: Any) -> tuple[Any, Any]:
    import transformers as tf
    from transformers import Qwen2VLImageProcessor

    ids = {f"{k}_token_id": tok.convert_tokens_to_ids(t) for k, t in
           (("image", "<|image_pad|>"), ("video", "<|video_pad|>"), ("vision_start", "<|vision_start|>"),
            ("vision_end", "<|vision_end|>"))}
    # M-RoPE splits head_dim/2 = 4 rotary pairs over (time, height, width).
    text = _text(tok, rope_scaling={"type": "mrope", "mrope_section": [1, 1, 2]}, rope_theta=10000.0)
    vision = {"depth": 1, "num_heads": 2, "patch_size": 4, "spatial_merge_size": 2, "temporal_patch_size": 2}
    if variant == "qwen2_vl":
        vision |= {"embed_dim": 32, "hidden_size": 32, "mlp_ratio": 2}
        cfg, cls, pcls = tf.Qwen2VLConfig, tf.Qwen2VLForConditionalGeneration, tf.Qwen2VLProcessor
    else:
        vision |= {"hidden_size": 32, "intermediate_size": 64, "out_hidden_size": 32, "window_size": 16,
                   "fullatt_block_indexes": [0]}
        cfg, cls, pcls = tf.Qwen2_5_VLConfig, tf.Qwen2_5_VLForConditionalGeneration, tf.Qwen2_5_VLProcessor
    if variant == "qwen3_vl":
        # Qwen3-VL: plain ViT blocks + deep-stack mergers feeding LM layer 0; rope_parameters (5.x name).
        text = _text(tok, rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                           "mrope_section": [1, 1, 2], "mrope_interleaved": True})
        vision = {"depth": 2, "num_heads": 2, "patch_size": 4, "spatial_merge_size": 2, "temporal_patch_size": 2,
                  "hidden_size": 32, "intermediate_size": 64, "out_hidden_size": 32, "num_position_embeddings": 64,
                  "deepstack_visual_indexes": [0]}
        cfg, cls, pcls = tf.Qwen3VLConfig, tf.Qwen3VLForConditionalGeneration, tf.Qwen3VLProcessor
    config = cfg(text_config=text, vision_config=vision, **ids)
    # 32x32 px -> 8x8 patches of 4 px -> 16 tokens after the 2x2 merge.
    ip = Qwen2VLImageProcessor(min_pixels=16 * 16, max_pixels=_SIZE * _SIZE, patch_size=4, merge_size=2,
                               temporal_patch_size=2)
    video = tf.Qwen2VLVideoProcessor(min_pixels=16 * 16, max_pixels=_SIZE * _SIZE, patch_size=4, merge_size=2,
                                     temporal_patch_size=2)
    tok = as_tokenizer_class(tok, tf.Qwen2TokenizerFast)
    return cls(config), pcls(image_processor=ip, tokenizer=tok, video_processor=video, chat_template=T.QWEN2_VL)


def _internvl(tok: Any) -> tuple[Any, Any]:
    from transformers import (
        GotOcr2ImageProcessor,
        InternVLConfig,
        InternVLForConditionalGeneration,
        InternVLProcessor,
        InternVLVideoProcessor,
    )

    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
              "image_size": [_SIZE, _SIZE], "patch_size": [8, 8]}
    # 4x4 patches, pixel-shuffled by downsample_ratio 0.5 -> 4 tokens per tile.
    cfg = InternVLConfig(vision_config=vision, text_config={"model_type": "qwen2", **_text(tok)},
                         image_token_id=tok.convert_tokens_to_ids("<IMG_CONTEXT>"), image_seq_length=4,
                         downsample_ratio=0.5)
    ip = GotOcr2ImageProcessor(size={"height": _SIZE, "width": _SIZE}, crop_to_patches=True,
                               max_patches=2)
    video = InternVLVideoProcessor(size={"height": _SIZE, "width": _SIZE})
    proc = InternVLProcessor(ip, tok, video, image_seq_length=4, chat_template=T.INTERNVL)
    return InternVLForConditionalGeneration(cfg), proc


def _idefics3(tok: Any) -> tuple[Any, Any]:
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessor,
        Idefics3Processor,
    )

    # 4x4 patches per 32 px tile, pixel-shuffled by scale_factor 2 -> 4 tokens per tile.
    cfg = Idefics3Config(vision_config=_vit(), text_config={"model_type": "llama", **_text(tok)}, scale_factor=2,
                         image_token_id=tok.convert_tokens_to_ids("<image>"))
    # Images are split into 32 px tiles (longest edge up to 64 px -> up to 2x2 tiles + a global one).
    ip = Idefics3ImageProcessor(size={"longest_edge": 2 * _SIZE}, max_image_size={"longest_edge": _SIZE},
                                do_image_splitting=True)
    # The processor re-adds its tokens with a call that replaces the tokenizer's list of additional
    # special tokens: give it a copy and put the shared tokenizer (which has them all) back.
    proc = Idefics3Processor(ip, copy.deepcopy(tok), image_seq_len=4, chat_template=T.IDEFICS3)
    proc.tokenizer = tok
    return Idefics3ForConditionalGeneration(cfg), proc


def _paligemma(tok: Any) -> tuple[Any, Any]:
    from transformers import (
        PaliGemmaConfig,
        PaliGemmaForConditionalGeneration,
        PaliGemmaProcessor,
        SiglipImageProcessor,
    )

    cfg = PaliGemmaConfig(vision_config={"model_type": "siglip_vision_model", **_vit(projection_dim=32)},
                          text_config={"model_type": "gemma", **_text(tok, num_image_tokens=16)},
                          image_token_index=tok.convert_tokens_to_ids("<image>"), projection_dim=32)
    ip = SiglipImageProcessor(size={"height": _SIZE, "width": _SIZE})
    ip.image_seq_length = 16  # 4x4 patches, no pooling
    # The shared tokenizer class, not GemmaTokenizerFast: transformers 5 rebuilds a Gemma tokenizer's
    # normaliser and pre-tokenizer on load (SentencePiece style), so a saved teacher would tokenize
    # differently from the byte-level BPE it was built with. The <loc>/<seg> tokens the processor
    # adds are in the shared vocabulary already (LOC_SEG_TOKENS).
    return PaliGemmaForConditionalGeneration(cfg), PaliGemmaProcessor(ip, tok, chat_template=T.PALIGEMMA)


def _mistral3(tok: Any) -> tuple[Any, Any]:
    from transformers import (
        Mistral3Config,
        Mistral3ForConditionalGeneration,
        PixtralImageProcessor,
        PixtralProcessor,
    )

    # 32x32 px, 8 px patches -> a 4x4 grid; the 2x2 patch merger leaves 2x2 image tokens.
    vision = {"model_type": "pixtral", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
              "num_attention_heads": 2, "head_dim": 16, "image_size": _SIZE, "patch_size": 8}
    cfg = Mistral3Config(vision_config=vision, text_config={"model_type": "mistral", **_text(tok)},
                         image_token_index=tok.convert_tokens_to_ids("[IMG]"), spatial_merge_size=2,
                         tie_word_embeddings=False)
    ip = PixtralImageProcessor(size={"longest_edge": _SIZE}, patch_size=8)
    proc = PixtralProcessor(ip, tok, patch_size=8, spatial_merge_size=2, chat_template=T.MISTRAL3)
    return Mistral3ForConditionalGeneration(cfg), proc


def _gemma3(tok: Any) -> tuple[Any, Any]:
    from transformers import (
        Gemma3Config,
        Gemma3ForConditionalGeneration,
        Gemma3ImageProcessor,
        Gemma3Processor,
    )

    # final_logit_softcapping set so the soft-cap path of the adapter is exercised.
    text = _text(tok, sliding_window=16, final_logit_softcapping=30.0, query_pre_attn_scalar=8)
    cfg = Gemma3Config(text_config=text, vision_config=_vit(), mm_tokens_per_image=4,
                       boi_token_index=tok.convert_tokens_to_ids("<start_of_image>"),
                       eoi_token_index=tok.convert_tokens_to_ids("<end_of_image>"),
                       image_token_index=tok.convert_tokens_to_ids("<image_soft_token>"))
    ip = Gemma3ImageProcessor(size={"height": _SIZE, "width": _SIZE})
    return Gemma3ForConditionalGeneration(cfg), Gemma3Processor(ip, tok, chat_template=T.GEMMA3, image_seq_length=4)


def tiny_vlm(variant: str, tokenizer: Any, seed: int = 0) -> tuple[Any, Any]:
    """``(model, processor)`` of a tiny random ``variant`` (one of ``TINY_VARIANTS``) in eval mode.

    ``tokenizer`` is the shared BPE tokenizer (``train_bpe_tokenizer``); the processor's tokenizer
    is ``family_tokenizer(tokenizer, family)``, whose vocabulary equals ``vlm_tokenizer(tokenizer)``'s.
    """
    import torch

    if variant not in VARIANT_FAMILY:
        raise ValueError(f"unknown tiny VLM variant {variant!r}; valid: {', '.join(TINY_VARIANTS)}")
    tok = family_tokenizer(tokenizer, VARIANT_FAMILY[variant])
    torch.manual_seed(seed)
    if variant in ("llava_clip", "llava_siglip"):
        model, proc = _llava(variant, tok)
    elif variant.startswith("qwen"):
        model, proc = _qwen(variant, tok)
    else:
        model, proc = {"llava_next": _llava_next, "llava_onevision": _llava_onevision, "internvl": _internvl, "idefics3": _idefics3, "paligemma": _paligemma,
                       "gemma3": _gemma3, "mistral3": _mistral3}[variant](tok)
    return model.eval(), proc
