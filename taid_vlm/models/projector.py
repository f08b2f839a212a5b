"""Projectors from vision tokens ``[B, T, C]`` to LM embeddings ``[B, T', D]``, by registry name."""

from __future__ import annotations

import math

import torch
from torch import nn


class MLPProjector(nn.Module):
    """LLaVA-1.5: Linear(C, D) -> GELU -> Linear(D, D); keeps the number of tokens."""

    token_factor = 1

    def __init__(self, in_dim: int, out_dim: int, hidden: int | None = None) -> None:
        super().__init__()
        hidden = hidden or out_dim
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, T, C] -> [B, T, D]``."""
        return self.net(x)


def pixel_shuffle(x: torch.Tensor, scale: int = 2) -> torch.Tensor:
    """Fold each ``scale x scale`` patch neighbourhood into the channels.

    ``[B, T, C] -> [B, T / scale^2, C * scale^2]``; ``T`` must be a square grid whose side is a
    multiple of ``scale``. Neighbouring patches of one output token are contiguous in channels.
    """
    b, t, c = x.shape
    side = math.isqrt(t)
    if side * side != t or side % scale:
        raise ValueError(f"pixel shuffle needs a square grid with side divisible by {scale}; got {t} tokens")
    g = side // scale
    x = x.reshape(b, g, scale, g, scale, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, g * g, scale * scale * c)


class PixelShuffleMLPProjector(nn.Module):
    """InternVL style: 2x2 pixel shuffle (4x fewer tokens) -> LayerNorm -> Linear -> GELU -> Linear."""

    token_factor = 4

    def __init__(self, in_dim: int, out_dim: int, hidden: int | None = None, scale: int = 2) -> None:
        super().__init__()
        self.scale = scale
        self.token_factor = scale * scale
        hidden = hidden or out_dim
        wide = in_dim * scale * scale
        self.net = nn.Sequential(nn.LayerNorm(wide), nn.Linear(wide, hidden), nn.GELU(), nn.Linear(hidden, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, T, C] -> [B, T / 4, D]``."""
        return self.net(pixel_shuffle(x, self.scale))


PROJECTORS = {"mlp": MLPProjector, "pixel_shuffle_mlp": PixelShuffleMLPProjector}


def build_projector(spec: dict, in_dim: int, out_dim: int) -> nn.Module:
    """Build the projector named by ``spec["type"]``; ValueError listing valid names otherwise."""
    kind = spec.get("type", "mlp")
    if kind not in PROJECTORS:
        raise ValueError(f"unknown projector type {kind!r}; valid: {', '.join(sorted(PROJECTORS))}")
    return PROJECTORS[kind](in_dim, out_dim, hidden=spec.get("hidden_size"))
