"""A sequence batch seen as [0, 1] images, for attack code that only knows images (both AutoAttacks).

Both AutoAttack implementations clamp every iterate to [0, 1], take eps in that box's units, and
Square needs (N, C, H, W) inputs (torchattacks even refuses inputs outside [0, 1]). For a model
whose bounds are not the unit box (a series in raw units, eps in training standard deviations),
`UnitView` maps the batch affinely:

1. each channel is divided by its scale (its training std), so the eps-ball becomes the same
   radius eps in every channel;
2. one shift and stretch, the same for every coordinate, takes [min - eps, max + eps] of the batch
   onto [0, 1]: the backends' clamp can never bind inside the ball, so they solve exactly the
   unboxed problem, with eps / stretch as their eps;
3. the length L is folded into (h, w) with h * w = L (h the largest divisor <= sqrt(L)), so that
   Square's square windows are h-row blocks of contiguous steps; a prime L folds to (1, L), where
   Square's windows shrink to single steps (its own min(h, w) bound), and every other attack
   is unaffected by the fold.

Every step of the map is affine with one factor per channel, so sign steps, Linf projections,
Square's +-eps vertices and FAB's Linf geometry correspond exactly. The observed-range box is not
given to the backends: `Attack.__call__` projects their result onto it afterwards, which keeps
the result valid but may make AutoAttack weaker there than with the box inside its search.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from model_zoo.bounds import Bounds


def fold(length: int) -> tuple[int, int]:
    """(h, w) with h * w = length and h the largest divisor of length that is <= sqrt(length)."""
    h = max(d for d in range(1, math.isqrt(length) + 1) if length % d == 0)
    return h, length // h


@dataclass(frozen=True)
class UnitView:
    """The affine map between a (N, C, L) batch and its [0, 1] image view (N, C, h, w)."""

    scale: torch.Tensor  # (1, C, 1)
    low: float
    span: float
    eps: float  # the radius in the view's units
    channels: int
    length: int

    @classmethod
    def of(cls, x: torch.Tensor, bounds: Bounds, eps: float) -> UnitView:
        if x.ndim != 3:
            raise ValueError(f"UnitView maps (N, C, L) series, got shape {tuple(x.shape)}")
        scale = torch.as_tensor(bounds.scale, dtype=x.dtype, device=x.device).reshape(1, -1, 1).expand(1, x.shape[1], 1)
        u = x / scale
        low = u.min().item() - eps
        span = u.max().item() + eps - low
        span = span if span > 0 else 1.0
        return cls(scale.contiguous(), low, span, eps / span, x.shape[1], x.shape[2])

    def to_unit(self, x: torch.Tensor) -> torch.Tensor:
        h, w = fold(self.length)
        v = (x / self.scale - self.low) / self.span
        return v.clamp(0.0, 1.0).reshape(len(x), self.channels, h, w)  # the clamp only absorbs rounding

    def from_unit(self, v: torch.Tensor) -> torch.Tensor:
        u = v.reshape(len(v), self.channels, self.length) * self.span + self.low
        return u * self.scale

    def model(self, model: nn.Module) -> nn.Module:
        return _Viewed(model, self)


class _Viewed(nn.Module):
    """model(from_unit(v)): what the backends attack."""

    def __init__(self, model: nn.Module, view: UnitView) -> None:
        super().__init__()
        self.inner = model
        self.view = view

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        return self.inner(self.view.from_unit(v))
