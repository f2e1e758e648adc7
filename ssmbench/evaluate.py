"""`evaluate(model, (images, labels), suite, EvalSettings(...))`: one attack suite on the first N test examples.

The RobustBench convention: the first `n_examples` of the test split in their fixed order (so two
evaluations of the same N are on the same images), the model in eval mode, Linf eps on [0, 1]
images. The data are attacked batch by batch; each batch runs the whole suite (every attack only
on the points still robust), so the result per example does not depend on what came before it and
an interrupted run can continue from a per-batch state file and end with exactly the flags an
uninterrupted run gives.

The library never prints: a `progress(done, total, attack)` callback reports examples done and
the attack now running ('' between batches); the CLI draws the bar.

Evaluation is fp32: autocast is off inside evaluate(), whatever the caller has on.

Under torchrun (a process group is up, see model_zoo.training.distributed) the batches are dealt
out in rounds, batch i of a round to rank i; after each round every rank gathers the round's
per-example flags, so all ranks hold the flags of every batch in example order. Because a batch's
flags depend only on that batch, the result equals a one-process run exactly. Rank 0 alone reads
and writes the state file, so a resumed run continues where the job stopped, with any number of
processes.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from model_zoo.bounds import bounds_of
from model_zoo.checkpoints import tensors_sha256
from model_zoo.devices import resolve_device
from model_zoo.errors import UsageError
from model_zoo.files import atomic_write_bytes
from model_zoo.training import distributed
from ssmbench.attacks import (
    THREAT_MODEL,
    Attack,
    AttackSettings,
    SuiteResult,
    build_suite,
    eval_mode,
    suite_backend,
    suite_label,
    threat_model_name,
)
from ssmbench.checks import CheckConfig, CheckOutcome, run_checks
from ssmbench.outcomes import labels_sha256

Progress = Callable[[int, int, str], None]
STATE_FORMAT = 1


@dataclass(frozen=True)
class EvalSettings:
    """How an evaluation runs; the defaults are the paper's protocol on every example given.

    eps: the radius in `norm`. n_examples: the first N (None: all). batch_size: a batch
    runs the whole suite and PGD's noise is seeded per batch, so the batch size is part of what
    decides a result (and of what a state file must match). device: None picks CUDA when present.
    backend, version: which AutoAttack code and version the AutoAttack suites run. seed: the
    attacks'. checks: the sanity checks (None: off). state_path: with it, finished batches are
    saved there and a rerun with the same settings skips them; the file goes when the run completes.
    norm: the threat model's norm ("linf" or "l2"). box: the input box where the model allows a
    choice (sequences: "none", the default, or "observed"); the result's threat_model names it.
    """

    eps: float = field(default=8 / 255, metadata={"help": (
        "Radius of the threat model's ball: on [0, 1] images, e.g. 8/255 (Linf) or 0.5 (L2); "
        "on sequences, in training standard deviations per channel, e.g. 0.1.")})
    n_examples: int | None = None
    batch_size: int = field(default=256, metadata={"help": "Examples per batch; each batch runs the whole suite."})
    device: str | torch.device | None = None  # None or 'auto': CUDA when present (model_zoo.devices)
    backend: str = field(default="official", metadata={"help": (
        "AutoAttack implementation: official (the authors' code, pyautoattack) | torchattacks "
        "(its reimplementation, run with the same 100-iteration, 9-target budget).")})
    version: str = field(default="standard", metadata={"help": "AutoAttack version: standard | plus | rand (rand for randomized models)."})
    seed: int = field(default=0, metadata={"help": "Seed of the attacks' random starts."})
    checks: CheckConfig | None = CheckConfig()
    state_path: str | Path | None = None
    norm: str = field(default="linf", metadata={"help": (
        "Threat model's norm: linf | l2 (L2 PGD steps 2.5 eps / 10; AutoAttack's L2 version in both backends).")})
    box: str | None = None

    def __post_init__(self) -> None:
        self.attack_settings  # noqa: B018  (building them refuses a bad eps, backend, version, norm or box now)
        if self.batch_size < 1:
            raise UsageError(f"batch_size must be >= 1, got {self.batch_size}")

    @property
    def attack_settings(self) -> AttackSettings:
        return AttackSettings(self.eps, self.backend, self.version, self.seed, self.norm, self.box)


@dataclass(frozen=True)
class EvalResult:
    """One suite's evaluation: the suite's per-example flags are the result, every accuracy is
    derived from them; besides them, what the row records about how they were measured."""

    suite: str  # as recorded: 'autoattack' is the standard version, 'autoattack-plus' etc. otherwise
    eps: float
    per_example: SuiteResult  # its x_adv is None: an evaluation keeps flags only (it resumes from them)
    checks: tuple[CheckOutcome, ...]
    backend: str
    backend_version: str
    device: str
    seed: int
    wall_seconds: float
    threat_model: str = THREAT_MODEL
    labels_sha256: str = ""  # of the evaluated labels: identifies the examples for paired comparisons
    check_examples: int = 0  # how many of the examples the sanity checks ran on (0: checks off)

    @property
    def n_examples(self) -> int:
        return len(self.per_example.clean)

    @property
    def clean_acc(self) -> float:
        return self.per_example.clean_acc

    @property
    def robust_acc(self) -> float:
        return self.per_example.robust_acc

    @property
    def per_attack(self) -> dict[str, float]:
        return self.per_example.per_attack

    @property
    def flags(self) -> tuple[str, ...]:
        """What the sanity checks flagged, then what the attack code reported (AutoAttack's log)."""
        found = [outcome.flag for outcome in self.checks if outcome.flag] + list(self.per_example.warnings)
        return tuple(dict.fromkeys(found))


def evaluate(
    model: nn.Module,
    data: tuple[torch.Tensor, torch.Tensor],
    suite: str,
    settings: EvalSettings = EvalSettings(),
    *,
    progress: Progress | None = None,
) -> EvalResult:
    """Run `suite` on the first `settings.n_examples` (default: all) of data = (images, labels).

    The model is moved to `settings.device` and put in eval mode. `progress(done, total, attack)`
    reports examples done and the attack now running. Under torchrun call it on every rank, with
    the rank's device (cuda means cuda:LOCAL_RANK once the process group set it); every rank
    returns the whole result. The sanity checks (on their own first examples) run alike on every
    rank rather than on rank 0 alone, so that no rank waits in a collective while they run.
    """
    images, labels = data
    n = _validate(images, labels, settings.n_examples)
    attack_settings, batch_size, checks = settings.attack_settings, settings.batch_size, settings.checks
    threat_model = threat_model_name(settings.norm, bounds_of(model, settings.box))
    runner = build_suite(suite, attack_settings)
    device = resolve_device(settings.device)
    model = model.to(device)
    x, y = images[:n], labels[:n]
    label = suite_label(suite, settings.version)
    workers = distributed.current()
    fingerprint = _fingerprint(model, x, y, label, attack_settings, batch_size) if settings.state_path else {}
    state = distributed.on_main(_State.open, settings.state_path, fingerprint)
    report = progress or (lambda done, total, attack: None)
    batches = range(0, n, batch_size)
    with eval_mode(model), torch.autocast(device_type=device.type, enabled=False):
        report(min(state.done_batches * batch_size, n), n, "")
        for first in range(state.done_batches, len(batches), workers.world_size):
            began = time.perf_counter()
            record = None
            if first + workers.rank < len(batches):
                start = batches[first + workers.rank]
                end = min(start + batch_size, n)
                def on_attack(name: str, start: int = start) -> None:
                    report(start, n, name)

                result = runner.run(model, x[start:end].to(device), y[start:end].to(device), on_attack=on_attack)
                record = _record(result)
            records = [r for r in distributed.gather_objects(record) if r is not None]
            state.add(records, time.perf_counter() - began, write=workers.is_main)
            report(min(state.done_batches * batch_size, n), n, "")
        began = time.perf_counter()
        per_example = state.flags(runner.attacks)
        outcomes = () if checks is None else run_checks(
            model, x[: checks.n_examples].to(device), y[: checks.n_examples].to(device), attack_settings, checks,
            runner.attacks, per_example.clean.to(device), {name: flags.to(device) for name, flags in per_example.robust_after.items()},
        )
    if workers.is_main:
        state.finish()
    package, package_version = suite_backend(suite, settings.backend)
    return EvalResult(
        suite=label,
        eps=settings.eps,
        per_example=per_example,
        checks=outcomes,
        backend=package,
        backend_version=package_version,
        device=str(device),
        seed=settings.seed,
        wall_seconds=state.seconds + time.perf_counter() - began,
        threat_model=threat_model,
        labels_sha256=labels_sha256(y),
        check_examples=0 if checks is None else min(checks.n_examples, n),
    )


def _validate(images: torch.Tensor, labels: torch.Tensor, n_examples: int | None) -> int:
    if images.ndim not in (3, 4) or len(images) != len(labels):
        raise UsageError(f"expected images (N, C, H, W) or series (N, C, L) and N labels, got {tuple(images.shape)} and {tuple(labels.shape)}")
    n = len(images) if n_examples is None else n_examples
    if not 1 <= n <= len(images):
        raise UsageError(f"n_examples must be between 1 and {len(images)} (the split's size), got {n}")
    return n


def _fingerprint(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, label: str, settings: AttackSettings, batch_size: int
) -> dict[str, object]:
    """Everything that decides the per-batch results: a state file is only reused when all match."""
    data = hashlib.sha256(x.detach().cpu().float().contiguous().numpy().tobytes())
    data.update(y.detach().cpu().long().numpy().tobytes())
    weights = {name: (torch.view_as_real(t) if t.is_complex() else t) for name, t in model.state_dict().items()}
    return {
        "format": STATE_FORMAT,
        "suite": label,
        "eps": settings.eps,
        "norm": settings.norm,
        "backend": settings.backend,
        "seed": settings.seed,
        **({"box": settings.box} if settings.box is not None else {}),
        "batch_size": batch_size,
        "n_examples": len(x),
        "model_sha256": tensors_sha256(weights),
        "data_sha256": data.hexdigest(),
    }


def _bits(flags: torch.Tensor) -> str:
    return "".join("1" if flag else "0" for flag in flags.tolist())


def _unbits(text: str) -> torch.Tensor:
    return torch.tensor([char == "1" for char in text], dtype=torch.bool)


def _record(result: SuiteResult) -> dict[str, Any]:
    """One batch's flags as the state file keeps them (compact, and cheap to gather across ranks)."""
    return {
        "clean": _bits(result.clean),
        "after": {name: _bits(flags) for name, flags in result.robust_after.items()},
        "warnings": list(result.warnings),
    }


class _State:
    """Finished batches (flags after each attack, seconds), in memory and, if given a path, on disk.

    The file is rewritten atomically after every batch (every round of batches under torchrun),
    so a crash leaves the last good state. A batch's seconds are wall time: a round's time is
    split evenly between the batches that ran side by side in it.
    """

    def __init__(self, path: Path | None, fingerprint: dict[str, Any], batches: list[dict[str, Any]]) -> None:
        self.path = path
        self.fingerprint = fingerprint
        self.batches = batches

    @classmethod
    def open(cls, path: str | Path | None, fingerprint: dict[str, Any]) -> _State:
        if path is None:
            return cls(None, fingerprint, [])
        path = Path(path)
        if not path.exists():
            return cls(path, fingerprint, [])
        try:
            saved = json.loads(path.read_text())
            batches = list(saved["batches"])
            matches = saved["fingerprint"] == json.loads(json.dumps(fingerprint))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UsageError(f"{path}: unreadable evaluation state ({exc}); delete it to start over") from None
        if not matches:
            raise UsageError(f"{path}: the saved state belongs to another evaluation (model, data or settings differ); delete it to start over")
        return cls(path, fingerprint, batches)

    @property
    def done_batches(self) -> int:
        return len(self.batches)

    @property
    def seconds(self) -> float:
        return sum(float(batch["seconds"]) for batch in self.batches)

    def add(self, records: list[dict[str, Any]], seconds: float, write: bool = True) -> None:
        """Append the next batches (in example order), which together took `seconds`."""
        self.batches.extend({**record, "seconds": seconds / len(records)} for record in records)
        if write and self.path is not None:
            payload = {"fingerprint": self.fingerprint, "batches": self.batches}
            atomic_write_bytes(self.path, json.dumps(payload).encode())

    def flags(self, attacks: tuple[Attack, ...]) -> SuiteResult:
        """The flags over all batches, on the CPU (without adversarial points: the file has none)."""
        clean = torch.cat([_unbits(batch["clean"]) for batch in self.batches])
        after = {a.name: torch.cat([_unbits(batch["after"][a.name]) for batch in self.batches]) for a in attacks}
        warnings = dict.fromkeys(w for batch in self.batches for w in batch["warnings"])
        return SuiteResult(clean, list(after.values())[-1], after, None, tuple(warnings))

    def finish(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)
