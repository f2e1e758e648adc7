"""The frozen settings a training run composes, each concern declared once with the paper's defaults.

`ThreatModel` is what the attack inside training (and the per-epoch PGD-10) may do; `Optimization`
is the optimizer and its schedule; `MethodParams` is the base of each AT method's own parameters
(methods.py declares one dataclass per method next to its function). `TrainConfig` (config.py)
composes them. The CLI reads defaults and help text from these fields, so a default is written
here and nowhere else.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

import torch

from model_zoo.errors import UsageError
from model_zoo.limits import MAX_EPS, MAX_LR
from model_zoo.training import perturb

# Norm name -> how metadata and tables print it ("threat_model": "Linf"), from the perturbation
# registry. PGD-AT, TRADES and MART defend against either; the methods registry says which.
NORMS: dict[str, str] = {name: norm.name for name, norm in perturb.NORMS.items()}
# Linf's step when none is given: the paper's 2/255 whatever eps (so `--eps 4/255` keeps 2/255, as
# it always did); L2's is RobustBench's convention, 2.5 eps / steps (perturb.NORMS).
LINF_ALPHA = 2 / 255


def help_text(cls: type, name: str) -> str:
    """The help text declared with a dataclass field (`field(metadata={"help": ...})`)."""
    for item in fields(cls):
        if item.name == name:
            return str(item.metadata.get("help", ""))
    raise KeyError(f"{cls.__name__} has no field {name!r}")


def _check_finite(values: dict[str, float | None]) -> None:
    for name, value in values.items():
        if value is not None and not math.isfinite(value):
            raise UsageError(f"{name} must be a finite number, got {value}")


@dataclass(frozen=True)
class ThreatModel:
    """The perturbations training defends against and the per-epoch PGD-10 evaluates: an eps-ball
    of `norm` around each input (and the model's box: [0, 1] for images; for sequences eps is in
    training standard deviations and the box is model_zoo.bounds), attacked with `steps` steps of size `alpha`."""

    norm: str = field(default="linf", metadata={"help": f"Threat model norm: {', '.join(NORMS)}."})
    eps: float = field(default=8 / 255, metadata={
        "help": "Radius of the threat model for training and the PGD-10 eval, e.g. 8/255 (sequences: in training stds per channel, e.g. 0.1)."})
    alpha: float | None = field(default=None, metadata={
        "help": "Attack step size, e.g. 2/255 (default: 2/255 for linf, 2.5 eps/steps for l2)."})
    steps: int = field(default=10, metadata={"help": "Attack steps during training (pgd, trades, mart)."})

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise UsageError(f"threat model norm must be one of {', '.join(NORMS)}, got {self.norm!r}")
        if self.alpha is None:  # max(steps, 1): steps <= 0 is refused below, with its own message
            default = LINF_ALPHA if self.norm == "linf" else perturb.NORMS[self.norm].alpha(self.eps, max(self.steps, 1))
            object.__setattr__(self, "alpha", default)
        _check_finite({"eps": self.eps, "alpha": self.alpha})
        if not self.eps >= 0:
            raise UsageError(f"eps must be >= 0, got {self.eps}")
        for name, value in (("alpha", self.step_size), ("steps", self.steps)):
            if not value > 0:
                raise UsageError(f"{name} must be > 0, got {value}")
        for name, value in (("eps", self.eps), ("alpha", self.step_size)):
            if value > MAX_EPS:
                raise UsageError(f"{name} must be <= {MAX_EPS:g}, got {value}")

    @property
    def step_size(self) -> float:
        """alpha, resolved by __post_init__ (never None after it)."""
        assert self.alpha is not None
        return self.alpha

    @property
    def label(self) -> str:
        """'Linf': the norm as checkpoints and result rows name it."""
        return NORMS[self.norm]


# Optimizer and schedule names -> builders; the names are what checkpoints record.
OPTIMIZERS = {"AdamW": lambda params, lr, weight_decay: torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)}
SCHEDULES = {"cosine": lambda optimizer, epochs: torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)}


@dataclass(frozen=True)
class Optimization:
    """The optimizer, its learning-rate schedule over the run's epochs, and gradient clipping."""

    optimizer: str = field(default="AdamW", metadata={"help": f"Optimizer: {', '.join(OPTIMIZERS)}."})
    schedule: str = field(default="cosine", metadata={"help": f"Learning-rate schedule over the epochs: {', '.join(SCHEDULES)}."})
    lr: float = field(default=1e-3, metadata={"help": "AdamW learning rate (cosine schedule to 0)."})
    weight_decay: float = field(default=2e-4, metadata={"help": "AdamW weight decay."})
    grad_clip: float | None = field(default=None, metadata={"help": "Clip the gradient norm to this value."})

    def __post_init__(self) -> None:
        for name, value, choices in (("optimizer", self.optimizer, OPTIMIZERS), ("schedule", self.schedule, SCHEDULES)):
            if value not in choices:
                raise UsageError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
        _check_finite({"lr": self.lr, "weight_decay": self.weight_decay, "grad_clip": self.grad_clip})
        if not self.lr > 0:
            raise UsageError(f"lr must be > 0, got {self.lr}")
        if self.lr > MAX_LR:
            raise UsageError(f"lr must be <= {MAX_LR:g}, got {self.lr}")
        if not self.weight_decay >= 0:
            raise UsageError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise UsageError(f"grad_clip must be > 0 when given, got {self.grad_clip}")

    def build(self, parameters: Any, epochs: int) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
        """The optimizer over `parameters` and its schedule stepped once per epoch for `epochs`."""
        optimizer = OPTIMIZERS[self.optimizer](parameters, self.lr, self.weight_decay)
        return optimizer, SCHEDULES[self.schedule](optimizer, epochs)


@dataclass(frozen=True)
class MethodParams:
    """Base of an AT method's own parameters (ST and PGD-AT have none).

    Subclasses declare fields with defaults and help texts; `__post_init__` checks that every
    number is finite and positive (a zero beta is allowed: it switches the robust term off).
    """

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            if isinstance(value, bool):
                continue
            if isinstance(value, float) and not math.isfinite(value):
                raise UsageError(f"{item.name} must be a finite number, got {value}")
            minimum = item.metadata.get("min", 1)
            if not value >= minimum:
                raise UsageError(f"{item.name} must be >= {minimum}, got {value}")

    def effective_epochs(self, epochs: int) -> int:
        """The epochs a run of `epochs` actually trains (FreeAT shortens them)."""
        return epochs
