"""SequenceClassifier: image -> pixel sequence -> mixer blocks -> mean pool -> head.

Wiring follows the paper's released code (post-norm residual blocks, no input
normalization) except the sequence layout: we permute to (N, H*W, C) so that each token is
one pixel with its C channel values (the released code mixed channels on CIFAR).
"""

from __future__ import annotations

import torch
from torch import nn

from model_zoo.config import ModelConfig
from model_zoo.layers import get_mixer
from model_zoo.layers.attention import SelfAttention


class Block(nn.Module):
    """x = LN(x + mixer(x)), then optionally x = LN(x + attention(x)).

    Mixers registered with residual=False (Mega) return the block's update directly: x = LN(mixer(x)).
    """

    def __init__(self, mixer: nn.Module, d_model: int, attention: bool, residual: bool = True) -> None:
        super().__init__()
        self.mixer = mixer
        self.residual = residual
        self.norm = nn.LayerNorm(d_model)
        self.attention = SelfAttention(d_model) if attention else None
        self.attention_norm = nn.LayerNorm(d_model) if attention else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x + self.mixer(x) if self.residual else self.mixer(x))
        if self.attention is not None and self.attention_norm is not None:  # both or neither (__init__)
            x = self.attention_norm(x + self.attention(x))
        return x


class SequenceClassifier(nn.Module):
    """Takes images in [0, 1] of shape (N, C, H, W), returns logits (N, classes)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        spec = get_mixer(config.arch)
        mixer_kwargs = dict(config.mixer_options)
        if spec.supports_ads:
            mixer_kwargs["ads"] = config.ads
        self.encoder = nn.Linear(config.channels, config.d_model)
        self.encoder_norm = nn.LayerNorm(config.d_model)
        self.blocks = nn.ModuleList(
            Block(spec.cls(config.d_model, config.d_state, **mixer_kwargs), config.d_model, config.attention, spec.residual)
            for _ in range(config.n_layers)
        )
        self.head = nn.Linear(config.d_model, config.classes)

    @staticmethod
    def to_sequence(images: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, H*W, C): row-major pixels, one token per pixel."""
        n, c, h, w = images.shape
        return images.reshape(n, c, h * w).transpose(1, 2)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.encoder_norm(self.encoder(self.to_sequence(images)))
        for block in self.blocks:
            x = block(x)
        return self.head(x.mean(dim=1))
