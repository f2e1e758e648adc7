"""SequenceClassifier: image or series -> token sequence -> mixer blocks -> mean pool -> head.

Wiring follows the paper's released code (post-norm residual blocks, no input
normalization) except the sequence layout: we permute to (N, H*W, C) so that each token is
one pixel with its C channel values (the released code mixed channels on CIFAR).

A sequence model (config.input_kind "sequence") takes (N, C, L) series in the data set's raw
units and z-normalizes each channel inside itself with the training split's statistics, kept as
buffers so that they travel in the checkpoint's tensors (and its sha256). The same statistics
define its threat model (`input_bounds`): eps is a fraction of each channel's training std.
"""

from __future__ import annotations

import torch
from torch import nn

from model_zoo.bounds import BOXES, Bounds
from model_zoo.config import ModelConfig
from model_zoo.errors import UsageError
from model_zoo.layers import get_mixer
from model_zoo.layers.attention import SelfAttention

SEQUENCE_BOXES = ("none", "observed")  # the [0, 1] box is for images only
MIN_STD = 1e-8  # a constant channel keeps unit scale instead of dividing by zero


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
    """Takes images in [0, 1] (N, C, H, W), or raw series (N, C, L) for sequence data sets; returns logits (N, classes)."""

    input_mean: torch.Tensor
    input_std: torch.Tensor
    input_low: torch.Tensor
    input_high: torch.Tensor

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
        if config.input_kind == "sequence":  # identity until fit_input sets the training statistics
            channels = config.channels
            self.register_buffer("input_mean", torch.zeros(channels))
            self.register_buffer("input_std", torch.ones(channels))
            self.register_buffer("input_low", torch.full((channels,), -torch.inf))
            self.register_buffer("input_high", torch.full((channels,), torch.inf))

    @property
    def is_sequence(self) -> bool:
        return self.config.input_kind == "sequence"

    def fit_input(self, train: torch.Tensor) -> None:
        """Set the per-channel mean, std and observed range from raw (N, C, L) training series."""
        if not self.is_sequence:
            raise UsageError("fit_input is for sequence models; image models take [0, 1] images unnormalized")
        flat = train.detach().double().transpose(0, 1).reshape(self.config.channels, -1)
        self.input_mean.copy_(flat.mean(dim=1))
        self.input_std.copy_(flat.std(dim=1, unbiased=False).clamp_min(MIN_STD))
        self.input_low.copy_(flat.min(dim=1).values)
        self.input_high.copy_(flat.max(dim=1).values)

    def input_bounds(self, box: str | None = None) -> Bounds:
        """The threat model's bounds in this model's input units (see model_zoo.training.perturb).

        Images: the [0, 1] box, eps in pixel units. Sequences: eps times each channel's training
        std, and no box (the default) or the range observed in the training split ("observed").
        """
        if not self.is_sequence:
            if box not in (None, "unit"):
                raise UsageError(f"box {box!r} is for sequence data; images take the unit box")
            return Bounds()
        box = box or "none"
        if box not in SEQUENCE_BOXES:
            raise UsageError(f"box {box!r} does not apply to sequences; choose one of {', '.join(SEQUENCE_BOXES)} (of {', '.join(BOXES)})")
        column = (-1, 1)  # (C, 1) broadcasts over (N, C, L)
        if box == "none":
            return Bounds(box, self.input_std.view(column), None, None)
        return Bounds(box, self.input_std.view(column), self.input_low.view(column), self.input_high.view(column))

    def to_sequence(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, H*W, C): row-major pixels, one token per pixel; (N, C, L) -> (N, L, C) normalized."""
        if self.is_sequence:
            if x.ndim != 3:
                raise UsageError(f"this sequence model takes (N, C, L) series, got shape {tuple(x.shape)}")
            return ((x - self.input_mean[:, None]) / self.input_std[:, None]).transpose(1, 2)
        if x.ndim != 4:
            raise UsageError(f"this image model takes (N, C, H, W) images in [0, 1], got shape {tuple(x.shape)}")
        n, c, h, w = x.shape
        return x.reshape(n, c, h * w).transpose(1, 2)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        x = self.encoder_norm(self.encoder(self.to_sequence(inputs)))
        for block in self.blocks:
            x = block(x)
        return self.head(x.mean(dim=1))
