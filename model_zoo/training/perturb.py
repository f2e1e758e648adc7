"""Linf perturbation primitives shared by adversarial training and ssmbench's attacks.

PGD follows Madry et al. exactly: ONE uniform random start in the eps-ball (the released code
applied it twice), then K signed-gradient steps, each followed by projection onto the eps-ball
around x and onto the input box. Gradients are taken in fp32.

Where a perturbation may go is a `model_zoo.bounds.Bounds` (default: images, the eps-ball
intersected with [0, 1]); eps and alpha are in units of its per-channel scale.
"""

from __future__ import annotations

from collections.abc import Callable

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
    bounds: Bounds = UNIT,
) -> torch.Tensor:
    """Madry PGD maximizing loss_fn(model(x_adv), y); returns x_adv (detached).

    `y` is whatever loss_fn takes as its target (labels for CE, clean logits for TRADES' KL).
    eps and alpha are in units of `bounds.scale` (per-channel standard deviations for sequences).
    The model's train/eval mode is left as the caller set it.
    """
    x = x.detach()
    bounds = bounds.to(x)
    x_adv = uniform_start(x, eps, generator, bounds) if random_start else x.clone()
    for _ in range(steps):
        grad = input_gradient(model, x_adv, y, loss_fn)
        x_adv = project(x_adv.detach() + alpha * bounds.scale * grad.sign(), x, eps, bounds)
    return x_adv.detach()
