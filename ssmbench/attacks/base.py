"""The attack base class and what every attack shares: settings, results, eval mode, prediction.

An attack is a small object (torchattacks-style) called as `attack(model, x, y)`. The base class
owns the parts that every attack must get right and that are easy to get wrong one by one: the
model is put in eval mode (and restored afterwards), gradients are taken in fp32 with autocast off,
every returned point is projected onto the eps-ball around x and onto the model's input box
([0, 1] for images; none, or the observed range, for sequences: model_zoo.bounds), and success is
decided the same way for every attack (the prediction on x_adv differs from y). So an attack cannot
leave the threat model, and per-example success flags are comparable across attacks and backends.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from model_zoo.bounds import BOXES, Bounds, bounds_of
from model_zoo.errors import UsageError
from model_zoo.training import perturb

THREAT_MODEL = "Linf"
# What results call a threat model: the norm, then how eps is measured and the box. Images keep
# the plain norm name ("Linf", eps in pixels, [0, 1]) that every existing row has; sequence rows
# say that eps is in training standard deviations, so sequence and image rows are never compared.
BOX_SUFFIXES = {"unit": "", "none": "-std", "observed": "-std-observed"}


def threat_model_name(norm: str, bounds: Bounds) -> str:
    """'Linf' for images; 'Linf-std' / 'Linf-std-observed' (or L2-...) for sequences."""
    return perturb.NORMS[norm].name + BOX_SUFFIXES[bounds.box]
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
    norm: str = "linf"  # a key of model_zoo.training.perturb.NORMS
    box: str | None = None  # None: the model's own (images: unit; sequences: none); see model_zoo.bounds

    def __post_init__(self) -> None:
        if self.norm not in perturb.NORMS:
            raise UsageError(f"unknown norm {self.norm!r}; choose one of {', '.join(perturb.NORMS)}")
        if not 0.0 <= self.eps <= (1.0 if self.norm == "linf" else float("inf")) or self.eps != self.eps:
            raise UsageError(f"eps must be in [0, 1] (Linf: pixels for images, training stds for sequences) or >= 0 (L2), got {self.eps}")
        if self.box is not None and self.box not in BOXES:
            raise UsageError(f"unknown box {self.box!r}; choose one of {', '.join(BOXES)}")
        if self.backend not in BACKENDS:
            raise UsageError(f"unknown backend {self.backend!r}; choose one of {', '.join(BACKENDS)}")
        if self.version not in AUTOATTACK_VERSIONS:
            raise UsageError(f"unknown AutoAttack version {self.version!r}; choose one of {', '.join(AUTOATTACK_VERSIONS)}")

    @property
    def threat_model(self) -> str:
        """The norm as results record it: 'Linf' or 'L2'."""
        return perturb.NORMS[self.norm].name


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

    def __init__(self, eps: float, norm: str = "linf", box: str | None = None) -> None:
        self.eps = eps
        self.norm = norm
        self.box = box

    def bounds(self, model: nn.Module) -> Bounds:
        """The threat model's ball scale and box for this model (model_zoo.bounds)."""
        return bounds_of(model, self.box)

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
            bounds = self.bounds(model).to(x)
            x_adv = perturb.get_norm(self.norm).project(self.perturb(model, x, y).detach().float(), x, self.eps, bounds)
            success = predict(model, x_adv) != y
        return AttackResult(x_adv, success, self.warnings())
