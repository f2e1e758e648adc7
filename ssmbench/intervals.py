"""Interval arithmetic on tensors: the sound enclosures that interval bound propagation composes.

A `Box` holds elementwise lower and upper bounds. Every operation returns a box that contains
f(x) for every x in the input box(es): linear maps exactly (the box hull of a linear image is
mid -> W mid + b, radius -> |W| radius), monotone functions through their end points, products
through the four corner products, softmax through the bound that puts one logit at an end and
all others at the opposite ends. Dependencies between operands are not tracked (the price of
IBP), so bounds are sound but loosen with depth. Callers compute in float64, so rounding stays
far below the widths that matter.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# SiLU x * sigmoid(x) falls on (-inf, x0) and rises on (x0, inf); x0 solves 1 + x + e^x = 0.
SILU_ARGMIN = -1.2784645427610738


@dataclass(frozen=True)
class Box:
    """Elementwise bounds. A NaN bound (inf - inf, 0 * inf once widths overflow) becomes the
    unbounded side, which is always sound, so overflow loosens a bound but never breaks it."""

    lower: torch.Tensor
    upper: torch.Tensor

    def __post_init__(self) -> None:
        if self.lower.isnan().any() or self.upper.isnan().any():
            object.__setattr__(self, "lower", self.lower.nan_to_num(nan=-torch.inf, posinf=torch.inf, neginf=-torch.inf))
            object.__setattr__(self, "upper", self.upper.nan_to_num(nan=torch.inf, posinf=torch.inf, neginf=-torch.inf))

    @staticmethod
    def around(x: torch.Tensor, radius: float, low: float | None = None, high: float | None = None) -> Box:
        """The Linf ball of `radius` around x, intersected with [low, high] where given."""
        lower, upper = x - radius, x + radius
        if low is not None:
            lower = lower.clamp(min=low)
        if high is not None:
            upper = upper.clamp(max=high)
        return Box(lower, upper)

    @staticmethod
    def point(x: torch.Tensor) -> Box:
        return Box(x, x)

    @property
    def mid(self) -> torch.Tensor:
        return (self.lower + self.upper) / 2

    @property
    def rad(self) -> torch.Tensor:
        return (self.upper - self.lower) / 2

    def contains(self, x: torch.Tensor, tol: float = 0.0) -> bool:
        return bool(((x >= self.lower - tol) & (x <= self.upper + tol)).all())

    def map(self, f: Callable[[torch.Tensor], torch.Tensor]) -> Box:
        """A shape operation (transpose, reshape, slicing) applied to both bounds."""
        return Box(f(self.lower), f(self.upper))

    def __add__(self, other: Box) -> Box:
        return Box(self.lower + other.lower, self.upper + other.upper)

    def __sub__(self, other: Box) -> Box:
        return Box(self.lower - other.upper, self.upper - other.lower)

    def split(self, sizes: list[int], dim: int = -1) -> list[Box]:
        return [Box(lo, hi) for lo, hi in zip(self.lower.split(sizes, dim), self.upper.split(sizes, dim))]


def from_mid_rad(mid: torch.Tensor, rad: torch.Tensor) -> Box:
    return Box(mid - rad, mid + rad)


def linear(box: Box, weight: torch.Tensor, bias: torch.Tensor | None = None) -> Box:
    """x @ W.T + b over the last axis: exact box hull."""
    mid = box.mid @ weight.T
    if bias is not None:
        mid = mid + bias
    return from_mid_rad(mid, box.rad @ weight.abs().T)


def scale(box: Box, factor: torch.Tensor, offset: torch.Tensor | float = 0.0) -> Box:
    """factor * x + offset, elementwise with broadcasting (factor of either sign)."""
    return from_mid_rad(box.mid * factor + offset, box.rad * factor.abs())


def increasing(box: Box, f: Callable[[torch.Tensor], torch.Tensor]) -> Box:
    """A nondecreasing elementwise function (tanh, sigmoid, relu, softplus, exp)."""
    return Box(f(box.lower), f(box.upper))


def decreasing(box: Box, f: Callable[[torch.Tensor], torch.Tensor]) -> Box:
    return Box(f(box.upper), f(box.lower))


def silu(box: Box) -> Box:
    """SiLU is not monotone: its minimum over [l, u] is at the argmin clamped into the interval."""
    low = F.silu(torch.clamp(torch.full_like(box.lower, SILU_ARGMIN), box.lower, box.upper))
    return Box(low, torch.maximum(F.silu(box.lower), F.silu(box.upper)))


def mul(a: Box, b: Box) -> Box:
    """Elementwise product: min and max of the four corner products."""
    corners = torch.stack([a.lower * b.lower, a.lower * b.upper, a.upper * b.lower, a.upper * b.upper])
    return Box(corners.min(dim=0).values, corners.max(dim=0).values)


def matmul(a: Box, b: Box) -> Box:
    """a @ b for boxes of matrices, midpoint-radius form (Rump): |mid_a| r_b + r_a |mid_b| + r_a r_b.

    Each scalar product a_ik b_kj lies in mid_a mid_b +- (|mid_a| r_b + r_a |mid_b| + r_a r_b),
    and sums of enclosures enclose the sum.
    """
    ma, ra, mb, rb = a.mid, a.rad, b.mid, b.rad
    return from_mid_rad(ma @ mb, ma.abs() @ rb + ra @ mb.abs() + ra @ rb)


def softmax(box: Box, dim: int = -1) -> Box:
    """softmax_j is increasing in logit j and decreasing in every other logit, so
    lower_j = e^{l_j} / (e^{l_j} + sum_{k != j} e^{u_k}) and symmetrically for the upper bound."""
    shift = box.upper.amax(dim=dim, keepdim=True)  # one shift for both bounds keeps the ratios exact
    el, eu = torch.exp(box.lower - shift), torch.exp(box.upper - shift)
    sum_u, sum_l = eu.sum(dim=dim, keepdim=True), el.sum(dim=dim, keepdim=True)
    lower = (el / (el + sum_u - eu)).nan_to_num(nan=0.0).clamp(0.0, 1.0)
    upper = (eu / (eu + sum_l - el)).nan_to_num(nan=1.0).clamp(0.0, 1.0)
    return Box(lower, upper)


def square(box: Box) -> Box:
    """x^2: 0 at the bottom when the interval straddles 0."""
    low = torch.where((box.lower <= 0) & (box.upper >= 0), torch.zeros_like(box.lower),
                      torch.minimum(box.lower.square(), box.upper.square()))
    return Box(low, torch.maximum(box.lower.square(), box.upper.square()))


def layer_norm(box: Box, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float) -> Box:
    """LayerNorm over the last axis: centering is linear (exact), the variance of the centered
    box is bounded through x^2, 1/sqrt is decreasing, and their product is an interval product."""
    d = box.lower.shape[-1]
    mid, rad = box.mid, box.rad
    # |I - 11^T / d| rad: the diagonal weighs 1 - 1/d, every other entry 1/d.
    centered = from_mid_rad(mid - mid.mean(dim=-1, keepdim=True), rad * (1 - 2 / d) + rad.sum(dim=-1, keepdim=True) / d)
    squares = square(centered)
    variance = Box(squares.lower.mean(dim=-1, keepdim=True), squares.upper.mean(dim=-1, keepdim=True))
    inv_std = decreasing(variance, lambda v: torch.rsqrt(v + eps))
    out = mul(centered, inv_std)
    if weight is not None:
        out = scale(out, weight, 0.0 if bias is None else bias)
    return out
