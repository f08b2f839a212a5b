"""``TaidVLMForConditionalGeneration``: vision tower -> projector -> any HF causal LM.

The image embeddings replace the embeddings of the ``<image>`` token slots (the processor expands
each ``<image>`` placeholder to ``config.num_image_tokens`` slots), so the LM sees one ordinary
sequence of embeddings and keeps all its own machinery: caches, attention kernels, loss.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import AutoModelForCausalLM, GenerationMixin, PreTrainedModel

from taid_vlm.models.configuration import TaidVLMConfig
from taid_vlm.models.projector import build_projector
from taid_vlm.models.vision import build_vision_tower


def _mark_initialised(module: nn.Module) -> None:
    # post_init re-initialises every module not flagged; injected pretrained parts must keep weights.
    for m in module.modules():
        m._is_hf_initialized = True


def _no_split_of(*parts: nn.Module) -> list[str]:
    names: list[str] = []
    for part in parts:
        for m in part.modules():
            names += [n for n in getattr(m, "_no_split_modules", None) or [] if n not in names]
    return names


class TaidVLMForConditionalGeneration(PreTrainedModel, GenerationMixin):
    """Composed VLM. Parts: ``vision_tower``, ``projector``, ``language_model`` (see ``parts()``).

    Args:
        config: a ``TaidVLMConfig``.
        language_model / vision_tower: optional prebuilt (pretrained) parts, used instead of
            building random ones from the config; their weights are left untouched.
    """

    config_class = TaidVLMConfig
    base_model_prefix = ""
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True

    def __init__(self, config: TaidVLMConfig, language_model: nn.Module | None = None,
                 vision_tower: nn.Module | None = None) -> None:
        super().__init__(config)
        if config.text_config._attn_implementation is None:
            # transformers 5's config init resets the sub-config's attention to None, which a prebuilt
            # LM (sharing that config) then runs without its kernel; use the one resolved above.
            config.text_config._attn_implementation = config._attn_implementation
        if vision_tower is None:
            vision_tower = build_vision_tower(config.vision)
        else:
            _mark_initialised(vision_tower)
        if language_model is None:
            language_model = AutoModelForCausalLM.from_config(
                config.text_config, attn_implementation=config.text_config._attn_implementation)
        else:
            _mark_initialised(language_model)
        self.vision_tower = vision_tower
        self.projector = build_projector(config.projector, vision_tower.out_dim, config.text_config.hidden_size)
        self.language_model = language_model
        # Block classes that FSDP auto-wrap and accelerate's device maps must keep whole: the LM's
        # decoder layers and the vision tower's blocks, as each part's own class declares them.
        self._no_split_modules = _no_split_of(vision_tower, language_model)
        config.num_image_tokens = vision_tower.num_tokens // self.projector.token_factor
        # transformers 5 collects the LM's tied weights ({target: source}) from its children in post_init.
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        # Only the projector is ours; the towers and the LM initialise themselves in __init__.
        if isinstance(module, (nn.Linear, nn.LayerNorm)) and any(module is m for m in self.projector.modules()):
            module.reset_parameters()

    def train(self, mode: bool = True) -> TaidVLMForConditionalGeneration:
        """As ``nn.Module.train``, but a frozen vision tower (no parameter requires grad) stays in
        eval mode: in train mode its batch norms would normalise with each batch's statistics and
        overwrite the running ones, so a tower frozen as pretrained would still change (and dropout
        would perturb features nothing learns from)."""
        super().train(mode)
        if mode and not any(p.requires_grad for p in self.vision_tower.parameters()):
            self.vision_tower.eval()
        return self

    # ---- parts and embeddings ------------------------------------------------------------
    def parts(self) -> dict[str, nn.Module]:
        """``{"vision", "projector", "lm"}`` for per-part trainability and learning rates."""
        return {"vision": self.vision_tower, "projector": self.projector, "lm": self.language_model}

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.language_model.get_output_embeddings()

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_output_embeddings(value)

    def get_decoder(self) -> nn.Module:
        """The LM body (final norm included), for hidden states without the LM head."""
        # base_model is the body under every HF causal LM's head (get_decoder is not on all of them).
        return self.language_model.base_model

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        super().gradient_checkpointing_enable(gradient_checkpointing_kwargs)
        # timm/open_clip towers have their own switch; HF towers are covered by the call above.
        if hasattr(self.vision_tower, "set_grad_checkpointing"):
            self.vision_tower.set_grad_checkpointing(True)

    # ---- forward -------------------------------------------------------------------------
    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``pixel_values [N_img, 3, S, S] -> [N_img, num_image_tokens, D]`` in the LM's dtype."""
        dtype = next(self.projector.parameters()).dtype
        feats = self.vision_tower(pixel_values.to(dtype))
        return self.projector(feats)

    def embed(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None) -> torch.Tensor:
        """``input_ids [B, L]`` (+ images in order of their ``<image>`` slots) -> ``[B, L, D]``."""
        embeds = self.get_input_embeddings()(input_ids)
        if pixel_values is None or pixel_values.numel() == 0:
            return self._touch_vision(embeds)
        feats = self.image_features(pixel_values)
        slots = input_ids == self.config.image_token_id
        if int(slots.sum()) != feats.shape[0] * feats.shape[1]:
            raise ValueError(
                f"{int(slots.sum())} <image> token slots in input_ids but {feats.shape[0]} images x "
                f"{feats.shape[1]} tokens; encode text with the model's processor so each <image> expands "
                f"to {self.config.num_image_tokens} tokens"
            )
        return embeds.masked_scatter(slots.unsqueeze(-1), feats.to(embeds.dtype))

    def _touch_vision(self, embeds: torch.Tensor) -> torch.Tensor:
        # A text-only training batch would leave the trainable tower and projector without
        # gradients, which DDP reports as an error; a zero-weighted dummy image keeps them in the graph.
        if not (self.training and torch.is_grad_enabled()):
            return embeds
        if not any(p.requires_grad for p in self.vision_tower.parameters()) and not any(
                p.requires_grad for p in self.projector.parameters()):
            return embeds
        size = int(self.config.vision["image_size"])
        dummy = torch.zeros(1, 3, size, size, device=embeds.device)
        return embeds + 0.0 * self.image_features(dummy).sum().to(embeds.dtype)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs: Any,
    ):
        """Same outputs as the LM's forward (``CausalLMOutputWithPast``); ``labels`` give the LM loss.

        The KV cache and any other LM argument pass through ``kwargs`` untouched. ``generate`` feeds
        ``pixel_values`` only at prefill (transformers drops them on later steps), so decoding steps
        see text tokens without ``<image>`` slots.
        """
        if inputs_embeds is None:
            inputs_embeds = self.embed(input_ids, pixel_values)
        return self.language_model(
            inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids,
            labels=labels, use_cache=use_cache, logits_to_keep=logits_to_keep, **kwargs,
        )
