"""What differs between Hugging Face VLM families, as data: one ``FamilyRule`` per registry name.

Looked up by the family name the adapter was registered under (``llava``, ``qwen2_vl``, ...),
never by substrings of a model name. Checked against transformers 5.24's modeling/processing code.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# How a kept processor output is batched:
#   "tokens": one value per token ([L]); padded like input_ids (0), left or right;
#   "cat":    concatenated along dim 0 over the batch (per-image or per-patch rows: LLaVA
#             [n_img, 3, H, W], Qwen2-VL patches [n_patch, C*T*P*P] + image_grid_thw [n_img, 3]);
#   "images": a per-sample [1, n_img, ...] tensor, padded with zero images along dim 1 and stacked
#             (Idefics3 drops all-zero images itself);
#   "cat_pad": "cat" after zero-padding every other dim to the batch's largest, which the model cuts
#             off again with image_sizes: Pixtral's height and width (each image keeps its aspect
#             ratio), LLaVA-NeXT / OneVision's number of anyres crops ([n_img, n_crops, 3, H, W]).
COLLATE_MODES = ("tokens", "cat", "images", "cat_pad")


@dataclass(frozen=True)
class FamilyRule:
    """One VLM family's rules.

    Attributes:
        name: registry name.
        model_types: HF ``config.model_type`` values that ``family: auto`` maps here.
        keep: processor outputs passed to the model (besides ``input_ids``/``attention_mask``) and
            their collate mode (see ``COLLATE_MODES``).
        vision / projector / lm: dotted attribute paths (from the top model) of each part.
        vision_skip: a child of the vision module that belongs to the projector instead (Qwen2-VL's
            patch ``merger`` lives inside ``visual``); parts must not share parameters.
        projector_params: dotted paths of loose parameters (no module of their own) that belong to
            the projector part (LLaVA-NeXT / OneVision's learned ``image_newline``), so that an HF
            VLM student trains them with the projector.
        prefix_lm: PaliGemma-style prefix LM: the processor puts BOS after the image tokens and a
            newline at the end, and ``token_type_ids`` (1 from the first response token on) plus
            ``labels`` switch the model to its training attention mask.
        needs_image: the processor refuses text-only input.
    """

    name: str
    model_types: tuple[str, ...]
    keep: dict[str, str] = field(default_factory=lambda: {"pixel_values": "cat"})
    vision: str = "model.vision_tower"
    projector: str = "model.multi_modal_projector"
    lm: tuple[str, ...] = ("model.language_model", "lm_head")
    vision_skip: str | None = None
    projector_params: tuple[str, ...] = ()
    prefix_lm: bool = False
    needs_image: bool = False


_QWEN = {"keep": {"pixel_values": "cat", "image_grid_thw": "cat", "mm_token_type_ids": "tokens"}, "vision": "model.visual",
         "projector": "model.visual.merger", "vision_skip": "merger"}

_ANYRES = {"keep": {"pixel_values": "cat_pad", "image_sizes": "cat"}, "projector_params": ("model.image_newline",)}

FAMILIES: dict[str, FamilyRule] = {
    r.name: r for r in (
        FamilyRule("llava", ("llava",)),
        # anyres: each image is a base view + a grid of crops chosen from image_grid_pinpoints; the
        # processor pads the crops of a call to its largest count, image_sizes says which are real.
        FamilyRule("llava_next", ("llava_next",), **_ANYRES),
        # OneVision: anyres_max_9 (crops beyond 9 base grids are pooled down), SigLIP + Qwen2.
        FamilyRule("llava_onevision", ("llava_onevision",), **_ANYRES),
        # transformers 5 derives Qwen's M-RoPE positions from the processor's mm_token_type_ids
        # (1 on image tokens) and refuses images without them.
        FamilyRule("qwen2_vl", ("qwen2_vl",), **_QWEN),
        FamilyRule("qwen2_5_vl", ("qwen2_5_vl",), **_QWEN),
        # Qwen3-VL's deep-stack mergers (vision features added into early LM layers) stay in `vision`.
        FamilyRule("qwen3_vl", ("qwen3_vl",), **_QWEN),
        FamilyRule("internvl", ("internvl",)),
        FamilyRule("idefics3", ("idefics3", "smolvlm"),
                   keep={"pixel_values": "images", "pixel_attention_mask": "images"},
                   vision="model.vision_model", projector="model.connector", lm=("model.text_model", "lm_head")),
        FamilyRule("paligemma", ("paligemma",), prefix_lm=True, needs_image=True),
        # Gemma 3's processor returns token_type_ids marking image tokens (bidirectional attention
        # inside each image); the model needs them for the same attention as in training.
        FamilyRule("gemma3", ("gemma3",), keep={"pixel_values": "cat", "token_type_ids": "tokens"}),
        # Mistral 3 / Pixtral: images keep their aspect ratio; image_sizes says each one's size.
        FamilyRule("mistral3", ("mistral3",), keep={"pixel_values": "cat_pad", "image_sizes": "cat"}),
    )
}


def family_rule(name: str) -> FamilyRule:
    """The rule registered as ``name``; ValueError listing the valid names otherwise."""
    if name not in FAMILIES:
        raise ValueError(f"unknown HF VLM family {name!r}; valid: {', '.join(sorted(FAMILIES))}")
    return FAMILIES[name]
