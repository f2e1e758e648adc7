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

import math

import torch
from torch import nn

from model_zoo.bounds import BOXES, Bounds
from model_zoo.config import ModelConfig
from model_zoo.errors import UsageError
from model_zoo.frozen import weights_frozen
from model_zoo.layers import get_mixer
from model_zoo.layers.attention import SelfAttention

SEQUENCE_BOXES = ("none", "observed")  # the [0, 1] box is for images only
MIN_STD = 1e-8  # a constant channel keeps unit scale instead of dividing by zero

# Activation floats (tokens x d_model) per block of batch rows in a pass through frozen weights
# (eval mode, `frozen_weights`: every attack), 2 MiB. Each example's logits depend on its own row
# only, so a batch run block by block gives the same logits and input gradients up to float
# rounding (a GEMM over fewer rows may take another kernel: bit-identical for every mixer at the
# digits preset in 32-row blocks, 1e-5 relative at test sizes), while a block's activations stay
# in cache. Measured (2-core Intel Xeon, torch 2.13 CPU, 2 threads, study runners paused; forward
# + input gradient, medians of 5 rounds in one process; whole batch -> 64-row blocks at digits'
# L = 64, d_model 128, batch 256): S4 48.0 -> 36.7 ms, S4 + AdS tanh 97.8 -> 76.3, S5 122.9 ->
# 99.7, Mega 188.4 -> 168.3; at MNIST's L = 784 and batch 64 (blocks of 4-8 rows): Mega 1386 ->
# 861-886 ms, S5 369 -> 306-321, S4 and DSS + AdS level (0.92x-1.06x). Mamba measured 1.38x
# slower in blocks (its scan tiles the batch itself) and opts out (`row_blocks` in the mixer
# registry). Training passes never run in blocks: they would rebuild the kernels per block and
# sum the weight gradients in another order.
FROZEN_BLOCK_FLOATS = 1 << 19


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
        self.row_blocks = spec.row_blocks
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

    def frozen_block_rows(self, inputs: torch.Tensor) -> int:
        """Batch rows per block of this pass: the whole batch unless the weights are frozen (see
        FROZEN_BLOCK_FLOATS); at least one row."""
        if inputs.ndim < 3 or not (self.row_blocks and weights_frozen(self)):  # a bad shape goes on to its error
            return inputs.shape[0] if inputs.ndim else 0
        tokens = math.prod(inputs.shape[2:])  # H * W pixels, or L steps
        return max(1, FROZEN_BLOCK_FLOATS // (tokens * self.config.d_model))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        rows = self.frozen_block_rows(inputs)
        if 0 < rows < len(inputs):
            return torch.cat([self.logits(block) for block in inputs.split(rows)])
        return self.logits(inputs)

    def logits(self, inputs: torch.Tensor) -> torch.Tensor:
        """The forward pass itself, on one block of rows."""
        x = self.encoder_norm(self.encoder(self.to_sequence(inputs)))
        for block in self.blocks:
            x = block(x)
        return self.head(x.mean(dim=1))
