"""Madry PGD and FGSM, both through the Linf primitives that adversarial training uses
(`model_zoo.training.perturb`), so the attack inside training and the PGD-10 of evaluation are one
implementation."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model_zoo.errors import UsageError
from model_zoo.training import perturb
from ssmbench.attacks.base import Attack, predict


class PGD(Attack):
    """Madry PGD through `model_zoo.training.perturb.pgd` (one random start, K steps of alpha =
    eps/4 in Linf or 2.5 eps / K in L2 by default, each projected), maximizing cross-entropy unless
    `loss_fn` says otherwise.

    With `restarts` > 1, restart r runs only on the points that no earlier restart fooled, so each
    example keeps its first successful restart. The generator is seeded per call, so the same
    batch always gets the same starts, which makes an interrupted evaluation resume exactly.
    """

    def __init__(
        self,
        eps: float,
        steps: int = 10,
        alpha: float | None = None,
        restarts: int = 1,
        seed: int = 0,
        name: str = "pgd",
        loss_fn: perturb.LossFn = F.cross_entropy,
        norm: str = "linf",
        box: str | None = None,
    ) -> None:
        super().__init__(eps, norm, box)
        if steps < 1 or restarts < 1:
            raise UsageError(f"PGD needs steps >= 1 and restarts >= 1, got {steps} and {restarts}")
        self.steps = steps
        self.alpha = perturb.get_norm(norm).alpha(eps, steps) if alpha is None else alpha
        self.restarts = restarts
        self.seed = seed
        self.name = name
        self.loss_fn = loss_fn

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        generator = torch.Generator(device=x.device).manual_seed(self.seed)
        bounds = self.bounds(model)
        x_adv = x.clone()
        todo = torch.arange(len(x), device=x.device)
        for restart in range(self.restarts):
            found = perturb.pgd(model, x[todo], y[todo], self.eps, self.alpha, self.steps, loss_fn=self.loss_fn, generator=generator,
                                norm=self.norm, bounds=bounds)
            x_adv[todo] = found
            if restart + 1 == self.restarts:
                break  # the caller judges success; one more forward here would cost ~3% of PGD-10
            todo = todo[predict(model, found) == y[todo]]
            if todo.numel() == 0:
                break
        return x_adv


class FGSM(Attack):
    """One signed-gradient step of size eps from x: PGD with one step and no random start."""

    name = "fgsm"

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return perturb.pgd(model, x, y, self.eps, self.eps, 1, random_start=False, bounds=self.bounds(model))
