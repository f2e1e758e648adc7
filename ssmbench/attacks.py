"""Linf attacks on images in [0, 1], and the suites that compose them into a worst-case evaluation.

An attack is a small object (torchattacks-style) called as `attack(model, x, y)`. The base class
owns the parts that every attack must get right and that are easy to get wrong one by one: the
model is put in eval mode (and restored afterwards), gradients are taken in fp32 with autocast off,
every returned point is projected onto the eps-ball around x and onto [0, 1], and success is
decided the same way for every attack (the prediction on x_adv differs from y). So an attack cannot
leave the threat model, and per-example success flags are comparable across attacks and backends.

A suite runs its attacks in order, each only on the points that are still robust (AutoAttack's
worst-case protocol), and keeps per-example robust flags after every attack: the flags are the
primary result; accuracies are derived from them.

    >>> suite = build_suite("pgd10", AttackSettings(eps=8 / 255))
    >>> result = suite.run(model, images, labels)
    >>> result.robust_acc, result.per_attack        # 0.62, {"pgd10": 0.62}

Suites: `pgd10` (our PGD, the paper's PGD-10), `autoattack` (AutoAttack's attacks, each one a
step of the suite, from the official code or torchattacks) and `all` (pgd10, then AutoAttack on
the points that PGD-10 left standing). The AutoAttack parts live in `ssmbench.attack_backends`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from model_zoo.errors import UsageError
from model_zoo.training import perturb

THREAT_MODEL = "Linf"
BACKENDS = ("official", "torchattacks")
AUTOATTACK_VERSIONS = ("standard", "plus", "rand")

# Called with the name of the attack that is about to run; lets a caller show what is happening.
AttackHook = Callable[[str], None]


@dataclass(frozen=True)
class AttackSettings:
    """What every attack in a suite shares: the threat model's eps and where randomness comes from.

    `backend` and `version` only concern the AutoAttack parts (and the standalone Square attack):
    `official` is the pyautoattack package (the authors' code), `torchattacks` its reimplementation.
    """

    eps: float
    backend: str = "official"
    version: str = "standard"
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.eps <= 1.0:
            raise UsageError(f"eps must be in [0, 1] for images in [0, 1], got {self.eps}")
        if self.backend not in BACKENDS:
            raise UsageError(f"unknown backend {self.backend!r}; choose one of {', '.join(BACKENDS)}")
        if self.version not in AUTOATTACK_VERSIONS:
            raise UsageError(f"unknown AutoAttack version {self.version!r}; choose one of {', '.join(AUTOATTACK_VERSIONS)}")


@dataclass(frozen=True)
class AttackResult:
    """Per example: the point the attack returns and whether it is misclassified.

    `warnings` carries what a third-party attack reported about the model (AutoAttack logs
    e.g. 'it seems to be a randomized defense'), as short flag codes.
    """

    x_adv: torch.Tensor
    success: torch.Tensor
    warnings: tuple[str, ...] = ()


def predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Predicted labels, without building a graph."""
    with torch.no_grad():
        return model(x).argmax(dim=1)


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode for the duration (the RobustBench convention), the caller's mode restored after."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


class Attack(ABC):
    """Base class: subclasses implement `perturb`; `__call__` enforces the threat model."""

    name: str = "attack"
    black_box: bool = False  # uses only the model's outputs (the check 'black box beats white box' needs this)

    def __init__(self, eps: float) -> None:
        self.eps = eps

    @abstractmethod
    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Return candidate adversarial points for x (float32, on x's device, model in eval mode)."""

    def warnings(self) -> tuple[str, ...]:
        """Flag codes that the last `perturb` call reported about the model (none by default)."""
        return ()

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> AttackResult:
        x = x.detach().float()
        y = y.detach()
        with eval_mode(model), torch.autocast(device_type=x.device.type, enabled=False):
            x_adv = perturb.project(self.perturb(model, x, y).detach().float(), x, self.eps)
            success = predict(model, x_adv) != y
        return AttackResult(x_adv, success, self.warnings())


class PGD(Attack):
    """Madry PGD through `model_zoo.training.perturb.pgd` (one uniform start, K signed steps of
    alpha = eps/4 by default, each projected), maximizing cross-entropy unless `loss_fn` says otherwise.

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
    ) -> None:
        super().__init__(eps)
        if steps < 1 or restarts < 1:
            raise UsageError(f"PGD needs steps >= 1 and restarts >= 1, got {steps} and {restarts}")
        self.steps = steps
        self.alpha = eps / 4 if alpha is None else alpha
        self.restarts = restarts
        self.seed = seed
        self.name = name
        self.loss_fn = loss_fn

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        generator = torch.Generator(device=x.device).manual_seed(self.seed)
        x_adv = x.clone()
        todo = torch.arange(len(x), device=x.device)
        for restart in range(self.restarts):
            found = perturb.pgd(model, x[todo], y[todo], self.eps, self.alpha, self.steps, loss_fn=self.loss_fn, generator=generator)
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
        return perturb.pgd(model, x, y, self.eps, self.eps, 1, random_start=False)


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
    """Per-example flags of one suite run; `robust_after[name]` holds the flags after that attack."""

    clean: torch.Tensor
    robust: torch.Tensor
    robust_after: dict[str, torch.Tensor]
    x_adv: torch.Tensor
    warnings: tuple[str, ...] = ()


class Suite(Attack):
    """An ordered composition of attacks; itself an attack (its success = not robust)."""

    def __init__(self, name: str, attacks: tuple[Attack, ...]) -> None:
        names = [attack.name for attack in attacks]
        if not attacks or len(set(names)) != len(names):
            raise UsageError(f"suite {name!r} needs attacks with unique names, got {names}")
        super().__init__(max(attack.eps for attack in attacks))
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
        return self.run(model, x, y).x_adv


SuiteFactory = Callable[[AttackSettings], tuple[Attack, ...]]


@dataclass(frozen=True)
class SuiteSpec:
    name: str
    description: str
    factory: SuiteFactory
    uses_autoattack: bool


SUITES: dict[str, SuiteSpec] = {}


def register_suite(name: str, description: str, uses_autoattack: bool) -> Callable[[SuiteFactory], SuiteFactory]:
    """Decorator: make `factory(settings) -> attacks` buildable as the suite `name`."""

    def decorate(factory: SuiteFactory) -> SuiteFactory:
        if name in SUITES:
            raise UsageError(f"suite {name!r} registered twice")
        SUITES[name] = SuiteSpec(name, description, factory, uses_autoattack)
        return factory

    return decorate


@register_suite("pgd10", "PGD, 10 steps of eps/4 from one uniform random start (the paper's PGD-10)", False)
def _pgd10(settings: AttackSettings) -> tuple[Attack, ...]:
    return (PGD(settings.eps, steps=10, seed=settings.seed, name="pgd10"),)


@register_suite("autoattack", "AutoAttack (APGD-CE, APGD-T, FAB-T, Square for 'standard')", True)
def _autoattack(settings: AttackSettings) -> tuple[Attack, ...]:
    from ssmbench import attack_backends  # imported here: it builds on this module

    return attack_backends.autoattack_parts(settings)


@register_suite("all", "pgd10, then AutoAttack on the points PGD-10 left standing", True)
def _all(settings: AttackSettings) -> tuple[Attack, ...]:
    return _pgd10(settings) + _autoattack(settings)


def get_suite_spec(name: str) -> SuiteSpec:
    try:
        return SUITES[name]
    except KeyError:
        raise UsageError(f"unknown attack suite {name!r}; choose one of {', '.join(SUITES)}") from None


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
        from ssmbench import attack_backends

        return attack_backends.package_of(backend)
    from ssmbench import __version__

    return "ssmbench", __version__


AttackFactory = Callable[[AttackSettings], Attack]


def _square(settings: AttackSettings) -> Attack:
    from ssmbench import attack_backends

    return attack_backends.square(settings)


def _autoattack_suite(settings: AttackSettings) -> Attack:
    return build_suite("autoattack", settings)


ATTACKS: dict[str, AttackFactory] = {
    "pgd": lambda s: PGD(s.eps, steps=10, seed=s.seed),
    "fgsm": lambda s: FGSM(s.eps),
    "square": _square,
    "autoattack": _autoattack_suite,
}


def get_attack(name: str, settings: AttackSettings) -> Attack:
    """A single attack by name: pgd (10 steps), fgsm, square (black box), autoattack (composite)."""
    try:
        factory = ATTACKS[name]
    except KeyError:
        raise UsageError(f"unknown attack {name!r}; choose one of {', '.join(ATTACKS)}") from None
    return factory(settings)
