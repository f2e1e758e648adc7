"""Linf perturbation primitives shared by adversarial training and ssmbench's attacks.

Everything lives in [0, 1] pixel space. PGD follows Madry et al. exactly: ONE uniform random
start in the eps-ball (the released code applied it twice), then K signed-gradient steps, each
followed by projection onto the eps-ball around x and onto [0, 1]. Gradients are taken in fp32.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def project(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """Project onto the Linf eps-ball around x intersected with [0, 1]."""
    return torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0.0, 1.0)


def uniform_start(x: torch.Tensor, eps: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """x + U(-eps, eps), clipped to [0, 1]."""
    noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) * 2 - 1
    return (x + eps * noise).clamp(0.0, 1.0)


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
) -> torch.Tensor:
    """Madry PGD maximizing loss_fn(model(x_adv), y); returns x_adv (detached).

    `y` is whatever loss_fn takes as its target (labels for CE, clean logits for TRADES' KL).
    The model's train/eval mode is left as the caller set it.
    """
    x = x.detach()
    x_adv = uniform_start(x, eps, generator) if random_start else x.clone()
    for _ in range(steps):
        grad = input_gradient(model, x_adv, y, loss_fn)
        x_adv = project(x_adv.detach() + alpha * grad.sign(), x, eps)
    return x_adv.detach()
