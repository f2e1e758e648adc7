"""Linf and L2 perturbation primitives shared by adversarial training and ssmbench's attacks.

Everything lives in [0, 1] pixel space. PGD follows Madry et al. exactly: ONE random start in the
eps-ball (the released code applied it twice), then K steps, each followed by projection onto the
eps-ball around x and onto [0, 1]. Gradients are taken in fp32. Linf: a uniform start and signed
steps. L2 (as torchattacks.PGDL2): a start uniform in radius along a Gaussian direction, steps
along the L2-normalized gradient, projection by rescaling delta to norm <= eps; clipping to
[0, 1] afterwards only shortens delta, so the point stays in the ball.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

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


_TINY = 1e-12  # keeps a zero gradient or delta from dividing by zero


def _l2_norms(t: torch.Tensor) -> torch.Tensor:
    """Per-example L2 norm, shaped to broadcast against t."""
    return t.flatten(1).norm(dim=1).view(-1, *([1] * (t.dim() - 1)))


def project_l2(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """Project onto the L2 eps-ball around x (rescaling delta), then clip to [0, 1]."""
    delta = x_adv - x
    factor = torch.clamp(eps / (_l2_norms(delta) + _TINY), max=1.0)
    return (x + delta * factor).clamp(0.0, 1.0)


def l2_start(x: torch.Tensor, eps: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """x + a Gaussian direction scaled to a radius U(0, eps), clipped to [0, 1] (torchattacks.PGDL2's start)."""
    direction = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    radius = torch.rand((len(x),) + (1,) * (x.dim() - 1), generator=generator, device=x.device, dtype=x.dtype)
    return (x + direction / (_l2_norms(direction) + _TINY) * radius * eps).clamp(0.0, 1.0)


def l2_direction(grad: torch.Tensor) -> torch.Tensor:
    return grad / (_l2_norms(grad) + _TINY)


@dataclass(frozen=True)
class Norm:
    """What PGD needs of a threat model's norm: its start, step direction, projection, step size."""

    name: str  # as results record it: "Linf", "L2"
    start: Callable[[torch.Tensor, float, torch.Generator | None], torch.Tensor]
    direction: Callable[[torch.Tensor], torch.Tensor]
    project: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]
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
) -> torch.Tensor:
    """Madry PGD maximizing loss_fn(model(x_adv), y) in the `norm` ball; returns x_adv (detached).

    `y` is whatever loss_fn takes as its target (labels for CE, clean logits for TRADES' KL).
    The model's train/eval mode is left as the caller set it.
    """
    ball = get_norm(norm)
    x = x.detach()
    x_adv = ball.start(x, eps, generator) if random_start else x.clone()
    for _ in range(steps):
        grad = input_gradient(model, x_adv, y, loss_fn)
        x_adv = ball.project(x_adv.detach() + alpha * ball.direction(grad), x, eps)
    return x_adv.detach()
