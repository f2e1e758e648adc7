"""Linf and L2 perturbation primitives shared by adversarial training and ssmbench's attacks.

Everything lives in [0, 1] pixel space. PGD follows Madry et al. exactly: ONE random start in the
eps-ball (the released code applied it twice), then K steps, each followed by projection onto the
eps-ball around x and onto [0, 1]. Gradients are taken in fp32. Linf: a uniform start and signed
steps. L2 (as torchattacks.PGDL2): a start uniform in radius along a Gaussian direction, steps
along the L2-normalized gradient, projection by rescaling delta to norm <= eps; clipping to
[0, 1] afterwards only shortens delta, so the point stays in the ball.

Where a perturbation may go is a `model_zoo.bounds.Bounds` (default `UNIT`: images in [0, 1]).
For a sequence model the ball is measured in its `scale` (each channel's training std): Linf
|delta_c| <= eps * scale_c, L2 ||delta / scale|| <= eps; steps are taken in those units (the
gradient with respect to x / scale), and the box is none or the observed range. With `UNIT` every
number is the same as without bounds (scale 1.0, clamp to [0, 1]).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from model_zoo.bounds import UNIT, Bounds, clip_box

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def project(x_adv: torch.Tensor, x: torch.Tensor, eps: float, bounds: Bounds = UNIT) -> torch.Tensor:
    """Project onto the Linf ball of radius eps * scale around x intersected with the box."""
    radius = eps * bounds.scale
    return clip_box(torch.min(torch.max(x_adv, x - radius), x + radius), x, bounds)


def uniform_start(x: torch.Tensor, eps: float, generator: torch.Generator | None = None, bounds: Bounds = UNIT) -> torch.Tensor:
    """x + U(-eps, eps) * scale, clipped to the box."""
    noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) * 2 - 1
    return clip_box(x + eps * bounds.scale * noise, x, bounds)


_TINY = 1e-12  # keeps a zero gradient or delta from dividing by zero


def _l2_norms(t: torch.Tensor) -> torch.Tensor:
    """Per-example L2 norm, shaped to broadcast against t."""
    return t.flatten(1).norm(dim=1).view(-1, *([1] * (t.dim() - 1)))


def project_l2(x_adv: torch.Tensor, x: torch.Tensor, eps: float, bounds: Bounds = UNIT) -> torch.Tensor:
    """Project onto the L2 eps-ball around x in scale units (rescaling delta), then onto the box."""
    delta = (x_adv - x) / bounds.scale
    factor = torch.clamp(eps / (_l2_norms(delta) + _TINY), max=1.0)
    return clip_box(x + delta * factor * bounds.scale, x, bounds)


def l2_start(x: torch.Tensor, eps: float, generator: torch.Generator | None = None, bounds: Bounds = UNIT) -> torch.Tensor:
    """x + a Gaussian direction scaled to a radius U(0, eps) (in scale units), clipped to the box (torchattacks.PGDL2's start)."""
    direction = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    radius = torch.rand((len(x),) + (1,) * (x.dim() - 1), generator=generator, device=x.device, dtype=x.dtype)
    return clip_box(x + direction / (_l2_norms(direction) + _TINY) * radius * eps * bounds.scale, x, bounds)


def l2_direction(grad: torch.Tensor) -> torch.Tensor:
    return grad / (_l2_norms(grad) + _TINY)


@dataclass(frozen=True)
class Norm:
    """What PGD needs of a threat model's norm: its start, step direction, projection, step size."""

    name: str  # as results record it: "Linf", "L2"
    start: Callable[[torch.Tensor, float, torch.Generator | None, Bounds], torch.Tensor]
    direction: Callable[[torch.Tensor], torch.Tensor]
    project: Callable[[torch.Tensor, torch.Tensor, float, Bounds], torch.Tensor]
    step_per_eps: Callable[[int], float]  # alpha / eps for K steps

    def alpha(self, eps: float, steps: int) -> float:
        return eps * self.step_per_eps(steps)


# Step sizes by convention: Linf eps/4 (the paper's 2/255 at 8/255); L2 2.5 eps / K (Madry et al.'s
# and the robustness library's rule, the one RobustBench's L2 PGD baselines use; for 10 Linf steps
# it too gives eps/4).
NORMS: dict[str, Norm] = {
    "linf": Norm("Linf", uniform_start, torch.sign, project, lambda steps: 0.25),
    "l2": Norm("L2", l2_start, l2_direction, project_l2, lambda steps: 2.5 / steps),
}


def get_norm(name: str) -> Norm:
    try:
        return NORMS[name]
    except KeyError:
        raise ValueError(f"unknown norm {name!r}; choose one of {', '.join(NORMS)}") from None


def input_gradient(model: nn.Module, x_adv: torch.Tensor, target: torch.Tensor, loss_fn: LossFn) -> torch.Tensor:
    """d loss / d x_adv in fp32, without touching parameter gradients."""
    x_adv = x_adv.detach().float().requires_grad_(True)
    with torch.autocast(device_type=x_adv.device.type, enabled=False):
        loss = loss_fn(model(x_adv), target)
    (grad,) = torch.autograd.grad(loss, x_adv)
    return grad


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    alpha: float,
    steps: int,
    *,
    random_start: bool = True,
    loss_fn: LossFn = F.cross_entropy,
    generator: torch.Generator | None = None,
    norm: str = "linf",
    bounds: Bounds = UNIT,
) -> torch.Tensor:
    """Madry PGD maximizing loss_fn(model(x_adv), y) in the `norm` ball; returns x_adv (detached).

    `y` is whatever loss_fn takes as its target (labels for CE, clean logits for TRADES' KL).
    eps and alpha are in units of `bounds.scale` (per-channel standard deviations for sequences).
    The model's train/eval mode is left as the caller set it.
    """
    ball = get_norm(norm)
    x = x.detach()
    bounds = bounds.to(x)
    x_adv = ball.start(x, eps, generator, bounds) if random_start else x.clone()
    for _ in range(steps):
        grad = input_gradient(model, x_adv, y, loss_fn)
        # The steepest step in scale units: the direction of d loss / d (x / scale), times scale.
        x_adv = ball.project(x_adv.detach() + alpha * bounds.scale * ball.direction(grad * bounds.scale), x, eps, bounds)
    return x_adv.detach()
