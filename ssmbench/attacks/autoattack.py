"""AutoAttack's attacks from two implementations, each attack one step of an ssmbench suite.

`official` runs the authors' code from the `pyautoattack` package; `torchattacks` runs
torchattacks.AutoAttack's reimplementation with the same version, seed and class count.
torchattacks 3.5.1 builds APGD, APGD-T and FAB with its class defaults of 10 iterations and
n_classes - 1 target classes; the authors' code runs 100 iterations and targets 9 classes. We set
torchattacks' parts to the authors' budget (TORCHATTACKS_STANDARD_BUDGET) so that a leaderboard
row that says "AutoAttack" means the same attack strength whichever backend produced it;
`official` stays the default and the paper's protocol. Each part
(APGD-CE, APGD-T, FAB-T, Square for 'standard') is a separate `Attack`, so a suite reports the
robust accuracy after each of them and the sanity checks can see what the black-box Square found
that the gradient attacks missed.

Every call builds the backend's AutoAttack object afresh, with the version's own settings, and
runs one part through the backend's own dispatch (pyautoattack's `run_standard_evaluation` with
one attack, as its `run_standard_evaluation_individual` does; torchattacks' AutoAttack's list of
attacks). Fresh objects matter: pyautoattack mutates its FAB object when it runs FAB-T, which would
leak into the next batch's FAB in the 'plus' version. Both backends reseed torch's global RNG in
every attack; we fork the RNG around them so that a caller's random stream is left untouched, and
the same batch always gives the same result (which is what makes resuming exact).

Resuming: pyautoattack 0.2.0's own state file cannot be restored (it writes the set of attacks as
the string "{'apgd-ce', ...}", so `from_disk` always reports 'a different set of attacks'; past
that, the restore branch never defines `y_adv`). `ssmbench.evaluate` keeps its own per-batch state
file instead. AutoAttack's log warnings (randomized defense, zero gradients, ...) are collected
and returned as flag codes instead of being printed.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import logging
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from ssmbench.attacks.base import Attack, AttackSettings
from ssmbench.attacks.unit_view import UnitView

# The attacks of each AutoAttack version, in the order both implementations run them.
AUTOATTACK_PARTS: dict[str, tuple[str, ...]] = {
    "standard": ("apgd-ce", "apgd-t", "fab-t", "square"),
    "plus": ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"),
    "rand": ("apgd-ce", "apgd-dlr"),
}
PACKAGES = {"official": "pyautoattack", "torchattacks": "torchattacks"}
# The authors' AutoAttack budget for APGD / APGD-T / FAB-T, applied to torchattacks' parts.
TORCHATTACKS_STANDARD_BUDGET = {"steps": 100, "n_target_classes": 9}
AUTOATTACK_LOGGER = "auto-attack"
# The DLR losses divide by a gap between sorted logits: APGD-DLR's by z_pi1 - z_pi3, APGD-T's
# targeted DLR by z_pi1 - (z_pi3 + z_pi4) / 2 (Croce & Hein 2020, eqs. 5 and 6). With fewer classes
# the loss is undefined and both implementations index past the logits (GunPoint has 2 classes,
# a 3-class set would break APGD-T too). Such a part is not run: it fools nothing, and the result
# carries UNDEFINED_PART_FLAG, so a row never passes for the whole of AutoAttack.
MIN_CLASSES = {"apgd-dlr": 3, "apgd-t": 4}
UNDEFINED_PART_FLAG = "aa-part-undefined"
# Flags that ssmbench's AutoAttack wrapper raises itself (the others are the AutoAttack code's warnings).
AUTOATTACK_FLAGS = {UNDEFINED_PART_FLAG: "an AutoAttack part whose loss needs more classes than the model has "
                                         "(APGD-T: 4, APGD-DLR: 3) was not run"}

# Substring of an AutoAttack log warning -> the flag code we record.
_WARNING_CODES = (
    ("randomized defense", "aa-randomized-defense"),
    ("dynamic defense", "aa-dynamic-defense"),
    ("probability distribution", "aa-probability-output"),
    ("zero gradient", "aa-zero-gradients"),
    ("target classes", "aa-target-classes"),
)


def package_of(backend: str) -> tuple[str, str]:
    """(package name, installed version) behind a backend name."""
    package = PACKAGES[backend]
    return package, importlib.metadata.version(package)


def warning_code(message: str) -> str:
    return next((code for text, code in _WARNING_CODES if text in message), "aa-warning")


class _Collector(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextmanager
def _collect_autoattack_warnings() -> Iterator[list[str]]:
    """AutoAttack's warnings, caught so that they become flags (and never reach stderr on their own)."""
    logger = logging.getLogger(AUTOATTACK_LOGGER)
    collector = _Collector()
    logger.addHandler(collector)
    try:
        yield collector.messages
    finally:
        logger.removeHandler(collector)


class AutoAttackPart(Attack):
    """One attack of AutoAttack (e.g. 'apgd-t') from one backend."""

    def __init__(self, part: str, settings: AttackSettings, n_queries: int | None = None) -> None:
        super().__init__(settings.eps, settings.norm, settings.box)
        if part not in AUTOATTACK_PARTS[settings.version]:
            raise ValueError(f"{part!r} is not part of AutoAttack {settings.version!r}")
        self.name = part
        self.black_box = part == "square"
        self.settings = settings
        self.n_queries = n_queries  # Square's query budget, when not AutoAttack's 5000
        self._warnings: tuple[str, ...] = ()

    def warnings(self) -> tuple[str, ...]:
        return self._warnings

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            n_classes = model(x[:1]).shape[-1]
        if n_classes < MIN_CLASSES.get(self.name, 2):
            self._warnings = (UNDEFINED_PART_FLAG,)
            return x.clone()
        devices = [x.device] if x.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), _collect_autoattack_warnings() as messages:
            x_adv = self._run(model, x, y)
        self._warnings = tuple(dict.fromkeys(warning_code(message) for message in messages))
        return x_adv

    def _run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Images as they are; a sequence through its [0, 1] view (ssmbench.attacks.unit_view)."""
        bounds = self.bounds(model)
        if bounds.box == "unit":
            return self._backend(model, x, y, self.settings.eps)
        view = UnitView.of(x, bounds, self.settings.eps)
        return view.from_unit(self._backend(view.model(model), view.to_unit(x), y, view.eps))

    def _backend(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
        if self.settings.backend == "official":
            return self._run_official(model, x, y, eps)
        return self._run_torchattacks(model, x, y, eps)

    def _run_official(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
        from pyautoattack import AutoAttack

        s = self.settings
        runner = AutoAttack(model, norm=s.threat_model, eps=eps, seed=s.seed, version=s.version, device=x.device)
        runner.attacks_to_run = [self.name]
        # The version's 9 target classes need 10 classes; fewer (GunPoint has 2) would index past
        # the logits. Target every other class instead, as torchattacks' parts do below.
        with torch.no_grad():
            others = model(x[:1]).shape[-1] - 1
        runner.apgd_targeted.n_target_classes = min(runner.apgd_targeted.n_target_classes, others)
        runner.fab.n_target_classes = min(runner.fab.n_target_classes, others)
        if self.n_queries is not None:
            runner.square.n_queries = self.n_queries
        x_adv, _ = runner.run_standard_evaluation(x, y, batch_size=len(x))
        return x_adv

    def _run_torchattacks(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
        import torchattacks

        s = self.settings
        with torch.no_grad():
            n_classes = model(x[:1]).shape[-1]
        runner = torchattacks.AutoAttack(model, norm=s.threat_model, eps=eps, version=s.version, n_classes=n_classes, seed=s.seed)
        # torchattacks 3.5.1 keeps the version's attacks, in AUTOATTACK_PARTS order, in a MultiAttack.
        attack = runner._autoattack.attacks[AUTOATTACK_PARTS[s.version].index(self.name)]
        if hasattr(attack, "steps"):
            attack.steps = TORCHATTACKS_STANDARD_BUDGET["steps"]
        if hasattr(attack, "n_target_classes"):
            attack.n_target_classes = min(TORCHATTACKS_STANDARD_BUDGET["n_target_classes"], n_classes - 1)
        if self.n_queries is not None:
            attack.n_queries = self.n_queries
        return attack(x, y)


def autoattack_parts(settings: AttackSettings) -> tuple[Attack, ...]:
    """The attacks of AutoAttack `settings.version`, in order, from `settings.backend`."""
    return tuple(AutoAttackPart(part, settings) for part in AUTOATTACK_PARTS[settings.version])


def square(settings: AttackSettings, n_queries: int | None = None) -> Attack:
    """The black-box Square attack (in the settings' norm, p_init 0.8, one restart) as configured in AutoAttack
    standard, from the chosen backend: pyautoattack's SquareAttack or torchattacks.Square."""
    return AutoAttackPart("square", dataclasses.replace(settings, version="standard"), n_queries)
