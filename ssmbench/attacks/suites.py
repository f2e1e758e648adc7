"""Suites: attacks composed into a worst-case evaluation, and the registry that names them.

A suite runs its attacks in order, each only on the points that are still robust (AutoAttack's
worst-case protocol), and keeps per-example robust flags after every attack: the flags are the
primary result; accuracies are derived from them.

    >>> suite = build_suite("pgd10", AttackSettings(eps=8 / 255))
    >>> result = suite.run(model, images, labels)
    >>> result.robust_acc, result.per_attack        # 0.62, {"pgd10": 0.62}

Suites: `pgd10` (our PGD, the paper's PGD-10), `autoattack` (AutoAttack's attacks, each one a
step of the suite, from the official code or torchattacks) and `all` (pgd10, then AutoAttack on
the points that PGD-10 left standing). The AutoAttack parts live in `ssmbench.attacks.autoattack`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from model_zoo.errors import UsageError
from model_zoo.registries import Registry
from ssmbench import __version__
from ssmbench.attacks.autoattack import autoattack_parts, package_of
from ssmbench.attacks.base import Attack, AttackHook, AttackSettings, eval_mode, predict
from ssmbench.attacks.pgd import PGD


class FlagAccuracies:
    """Accuracies derived from per-example flags, for every result that keeps them: the flags are
    the result (they merge exactly across batches and processes), accuracies are views of them."""

    clean: torch.Tensor  # bool (N,): correctly classified
    robust: torch.Tensor  # bool (N,): correctly classified after every attack
    robust_after: dict[str, torch.Tensor]  # attack -> bool (N,) after it, in the order they ran

    @property
    def clean_acc(self) -> float:
        return self.clean.float().mean().item()

    @property
    def robust_acc(self) -> float:
        """Worst case over all attacks: an example counts only if every attack failed on it."""
        return self.robust.float().mean().item()

    @property
    def per_attack(self) -> dict[str, float]:
        """Robust accuracy after each attack, in the order they ran (so it never increases)."""
        return {name: flags.float().mean().item() for name, flags in self.robust_after.items()}


@dataclass(frozen=True)
class SuiteResult(FlagAccuracies):
    """Per-example flags of one suite run; `robust_after[name]` holds the flags after that attack.

    `x_adv` holds the point each example ended at, or None where only the flags were kept (an
    evaluation keeps flags only, which is what lets it resume from a file).
    """

    clean: torch.Tensor
    robust: torch.Tensor
    robust_after: dict[str, torch.Tensor]
    x_adv: torch.Tensor | None
    warnings: tuple[str, ...] = ()


class Suite(Attack):
    """An ordered composition of attacks; itself an attack (its success = not robust)."""

    def __init__(self, name: str, attacks: tuple[Attack, ...]) -> None:
        names = [attack.name for attack in attacks]
        if not attacks or len(set(names)) != len(names):
            raise UsageError(f"suite {name!r} needs attacks with unique names, got {names}")
        boxes = {attack.box for attack in attacks}
        if len(boxes) != 1:
            raise UsageError(f"suite {name!r} needs attacks with one box, got {sorted(map(str, boxes))}")
        super().__init__(max(attack.eps for attack in attacks), box=boxes.pop())
        self.name = name
        self.attacks = attacks

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, on_attack: AttackHook | None = None) -> SuiteResult:
        """Clean flags, then each attack on the points still robust; per-example flags after each."""
        x = x.detach().float()
        with eval_mode(model):
            clean = predict(model, x) == y
        robust = clean.clone()
        x_adv = x.clone()
        after: dict[str, torch.Tensor] = {}
        warnings: list[str] = []
        for attack in self.attacks:
            todo = robust.nonzero().flatten()
            if todo.numel():
                if on_attack is not None:
                    on_attack(attack.name)
                found = attack(model, x[todo], y[todo])
                fooled = todo[found.success]
                robust[fooled] = False
                x_adv[fooled] = found.x_adv[found.success]
                warnings.extend(w for w in found.warnings if w not in warnings)
            after[attack.name] = robust.clone()
        return SuiteResult(clean, robust, after, x_adv, tuple(warnings))

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x_adv = self.run(model, x, y).x_adv
        assert x_adv is not None  # run() keeps the points
        return x_adv


SuiteFactory = Callable[[AttackSettings], tuple[Attack, ...]]


@dataclass(frozen=True)
class SuiteSpec:
    name: str
    description: str
    factory: SuiteFactory
    uses_autoattack: bool


SUITES: Registry[SuiteSpec] = Registry("attack suite")


def register_suite(name: str, description: str, uses_autoattack: bool) -> Callable[[SuiteFactory], SuiteFactory]:
    """Decorator: make `factory(settings) -> attacks` buildable as the suite `name`."""
    return SUITES.register(name, lambda factory: SuiteSpec(name, description, factory, uses_autoattack))


@register_suite("pgd10", "PGD, 10 steps (Linf: eps/4 from one uniform random start, the paper's PGD-10; L2: 2.5 eps / 10)", False)
def _pgd10(settings: AttackSettings) -> tuple[Attack, ...]:
    return (PGD(settings.eps, steps=10, seed=settings.seed, name="pgd10", norm=settings.norm, box=settings.box),)


@register_suite("autoattack", "AutoAttack (APGD-CE, APGD-T, FAB-T, Square for 'standard')", True)
def _autoattack(settings: AttackSettings) -> tuple[Attack, ...]:
    return autoattack_parts(settings)


@register_suite("all", "pgd10, then AutoAttack on the points PGD-10 left standing", True)
def _all(settings: AttackSettings) -> tuple[Attack, ...]:
    return _pgd10(settings) + _autoattack(settings)


def get_suite_spec(name: str) -> SuiteSpec:
    return SUITES.get(name)


def build_suite(name: str, settings: AttackSettings) -> Suite:
    return Suite(name, get_suite_spec(name).factory(settings))


def suite_label(name: str, version: str) -> str:
    """The suite's name in results: 'autoattack' means the standard version, as in the paper."""
    if version == "standard" or not get_suite_spec(name).uses_autoattack:
        return name
    return f"{name}-{version}"


def suite_backend(name: str, backend: str) -> tuple[str, str]:
    """(package, version) that implements the suite's attacks, for the result row."""
    if get_suite_spec(name).uses_autoattack:
        return package_of(backend)
    return "ssmbench", __version__
