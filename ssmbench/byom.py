"""Bring your own model: measure any `nn.Module` under the zoo's protocol and record it beside the zoo.

    >>> import ssmbench
    >>> row = ssmbench.benchmark(model, dataset="digits", eps=8 / 255, suite="pgd10", leaderboard="results.parquet")

A user's model is not a checkpoint: nothing in a file says what it expects. So before any number
is computed, `check_contract` holds it to the model I/O contract (DESIGN.md contract 1) on the
first test images, and what it cannot measure it refuses, one line each (`ContractError`):

- the output is not (N, classes) floating-point logits;
- the output is not finite, on the test images or on the corners of the box (all 0, all 1);
- the model expects inputs outside [0, 1]: it classifies the images significantly better when they
  are rescaled to one of the usual other conventions ([0, 255], [-1, 1], standardized per channel)
  than as they are. Such a model would be attacked at an eps measured on the wrong scale. The test
  is paired (exact McNemar, `range_alpha`) and needs a gain of `range_min_gain` of the examples, so
  an untrained model (at chance either way) passes and a trained one with the normalization left
  outside is caught.

What it can measure but should not pass silently becomes a flag recorded in the row:

- `returned-in-train-mode`: `benchmark()` was handed the model in train mode. It is evaluated in
  eval mode (the RobustBench convention); the flag says that this may not be the model its author
  runs. (`ssmbench eval module:callable` puts the fresh module in eval mode itself: PyTorch builds
  every module in train mode, so there the mode says nothing.)
- `random-forward`: two eval-mode forward passes differ (a randomized defense needs AutoAttack's
  rand version; deterministic attacks overstate it).

Rows are labelled with the model's name and `weights_sha256`, a sha256 over the state_dict's
tensors in sorted key order (complex ones as real views): for a zoo model this is the
`tensors_sha256` its checkpoint stores, so the same weights get the same hash however they came.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from model_zoo.checkpoints import tensors_sha256
from model_zoo.devices import resolve_device
from model_zoo.errors import UsageError
from ssmbench import data
from ssmbench.checks import CheckConfig
from ssmbench.evaluate import EvalResult, EvalSettings, Progress, evaluate
from ssmbench.leaderboard import ResultRow, append
from ssmbench.protocol import default_examples
from ssmbench.records import ModelLabels, labelled_row
from ssmbench.stats import mcnemar_exact

CONTRACT_FLAGS: dict[str, str] = {
    "returned-in-train-mode": "the model was handed over in train mode; it was evaluated in eval mode",
    "random-forward": "the forward pass is random in eval mode: use AutoAttack --version rand",
}

# Other input conventions a model may have been trained on, each as a map from our [0, 1] images.
Rescale = Callable[[torch.Tensor], torch.Tensor]


def _standardized(x: torch.Tensor) -> torch.Tensor:
    dims = (0, *range(2, x.ndim))  # every dimension but the channels
    mean = x.mean(dim=dims, keepdim=True)
    std = x.std(dim=dims, keepdim=True).clamp_min(1e-6)
    return (x - mean) / std


INPUT_CONVENTIONS: dict[str, Rescale] = {
    "[0, 255]": lambda x: x * 255,
    "[-1, 1]": lambda x: 2 * x - 1,
    "standardized per channel": _standardized,
}


class ContractError(UsageError):
    """A model that breaks the I/O contract so that no number measured on it would mean anything."""


@dataclass(frozen=True)
class ContractConfig:
    """How the contract checks decide. `n_examples` test images, the first ones, are used."""

    n_examples: int = 128
    random_tolerance: float = 1e-4  # relative logit change between two eval-mode passes
    range_min_gain: float = 0.10  # fraction of the examples another input scale must win by
    range_alpha: float = 0.01  # exact McNemar p-value below which that gain is not chance


_SPEC = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")


def is_callable_spec(target: str) -> bool:
    """'mypkg.models:build' is a module:callable target, unless a file or folder of that name exists."""
    return _SPEC.fullmatch(target) is not None and not Path(target).exists()


def resolve_callable(spec: str) -> Callable[..., Any]:
    """'package.module:attr' (attr may be dotted: 'module:Class.build') -> the object it names."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise UsageError(f"{spec!r} is not a module:callable target (e.g. mypkg.models:build)")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"{spec}: cannot import {module_name} ({exc}); is it installed or on PYTHONPATH?") from None
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise UsageError(f"{spec}: {module_name} has no attribute {attr}") from None
    if not callable(target):
        raise UsageError(f"{spec}: {attr} is not callable")
    return target


def parse_model_kwargs(text: str | None) -> dict[str, Any]:
    """'{"d": 64}' -> {"d": 64}; anything but a JSON object is a one-line error."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"--model-kwargs must be a JSON object such as '{{\"d_model\": 64}}' ({exc})") from None
    if not isinstance(value, dict):
        raise UsageError(f"--model-kwargs must be a JSON object such as '{{\"d_model\": 64}}', got {text}")
    return value


def build_user_model(spec: str, kwargs: dict[str, Any] | None = None) -> nn.Module:
    """Call the `module:callable` with `kwargs`; it must return an nn.Module."""
    factory = resolve_callable(spec)
    try:
        model = factory(**(kwargs or {}))
    except TypeError as exc:
        raise UsageError(f"{spec}: calling it with {kwargs or {}} failed ({exc})") from None
    if not isinstance(model, nn.Module):
        raise ContractError(f"{spec} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def weights_sha256(model: nn.Module) -> str:
    """sha256 over the state_dict tensors in sorted key order (names, dtypes, shapes, bytes)."""
    tensors = {name: torch.view_as_real(t) if t.is_complex() else t for name, t in model.state_dict().items()}
    return tensors_sha256(tensors)


def load_weights(model: nn.Module, path: str | Path) -> None:
    """Load a RobustBench-format checkpoint into `model` (strict).

    RobustBench saves `torch.save({'state_dict': ...})` or a bare state_dict, often with
    DataParallel's 'module.' prefix; a plain safetensors file of the state_dict works too. A `.pt`
    is read with `torch.load(weights_only=True)`, torch's restricted unpickler that builds only
    tensors and containers (no code runs), as the CIFAR reader restricts numpy's.
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"--weights {path}: no such file")
    try:
        if path.suffix == ".safetensors":
            loaded: Any = load_file(str(path))
        else:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # safetensors, the unpickler and zip reading each raise their own kinds
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"--weights {path}: not a readable state_dict file ({reason})") from None
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise UsageError(f"--weights {path}: expected a state_dict (name -> tensor) or {{'state_dict': ...}}")
    state = {name.removeprefix("module."): tensor for name, tensor in loaded.items()}
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}" for k in sorted(set(state) & set(expected))
             if state[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        raise UsageError(f"--weights {path}: does not fit the model: {len(missing)} missing keys {missing[:2]}, "
                         f"{len(unexpected)} unexpected {unexpected[:2]}, {len(wrong)} size mismatch(es) {wrong[:2]}")
    model.load_state_dict(state, strict=True)


def check_contract(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, classes: int, config: ContractConfig = ContractConfig(),
    device: torch.device | str = "cpu", box: bool = True,
) -> tuple[str, ...]:
    """Hold `model` to the I/O contract on the first images; raise ContractError or return flags.

    `box=False` for data without the [0, 1] box (time series in raw units): the corner images and
    the input-scale test are skipped there. The model's train/eval mode is restored afterwards,
    and no gradient is taken.
    """
    was_training = model.training
    x, y = images[: config.n_examples].to(device), labels[: config.n_examples].to(device)
    flags: list[str] = ["returned-in-train-mode"] if was_training else []
    model.eval()
    try:
        with torch.no_grad():
            logits = _checked_logits(model, x, classes, "the test images")
            for corner in (torch.zeros_like(x[:1]), torch.ones_like(x[:1])) if box else ():
                _checked_logits(model, corner, classes, f"an all-{int(corner.flatten()[0])} image")
            again = model(x)
            scale = logits.abs().max().clamp_min(1e-12)
            if float((again - logits).abs().max() / scale) > config.random_tolerance or bool((again.argmax(1) != logits.argmax(1)).any()):
                flags.append("random-forward")
            correct = logits.argmax(1) == y
            for convention, rescale in INPUT_CONVENTIONS.items() if box else ():
                _refuse_other_scale(model, rescale(x), y, correct, convention, config)
    finally:
        model.train(was_training)
    return tuple(flags)


def _checked_logits(model: nn.Module, x: torch.Tensor, classes: int, what: str) -> torch.Tensor:
    try:
        out = model(x)
    except Exception as exc:  # the user's forward: any failure is their model's, reported in one line
        raise ContractError(f"the model's forward pass failed on {what} of shape {tuple(x.shape)} "
                            f"({type(exc).__name__}: {str(exc).strip()[:200]})") from None
    if not isinstance(out, torch.Tensor) or not out.is_floating_point():
        raise ContractError(f"the model must return a float tensor of logits, got {type(out).__name__}"
                            + (f" {out.dtype}" if isinstance(out, torch.Tensor) else ""))
    if tuple(out.shape) != (len(x), classes):
        raise ContractError(f"the model returned shape {tuple(out.shape)} for {len(x)} images; expected logits "
                            f"({len(x)}, {classes}): one row per image, one column per class")
    if not torch.isfinite(out).all():
        raise ContractError(f"the model returned non-finite logits (NaN or inf) on {what}")
    return out


def _refuse_other_scale(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, correct: torch.Tensor, convention: str, config: ContractConfig
) -> None:
    other = model(x)
    other_correct = torch.isfinite(other).all(1) & (other.argmax(1) == y)
    gained, lost = int((other_correct & ~correct).sum()), int((correct & ~other_correct).sum())
    n = len(y)
    if gained - lost >= max(2, config.range_min_gain * n) and mcnemar_exact(gained, lost) < config.range_alpha:
        raise ContractError(
            f"the model expects inputs outside [0, 1]: on the first {n} test images it is right on "
            f"{int(other_correct.sum())} when they are scaled to {convention} and on {int(correct.sum())} as they are "
            "([0, 1]); put its input normalization inside the model"
        )


def with_flags(result: EvalResult, flags: tuple[str, ...]) -> EvalResult:
    """`result` with the contract's flags recorded next to those of its own checks."""
    warnings = tuple(dict.fromkeys((*result.per_example.warnings, *flags)))
    return dataclasses.replace(result, per_example=dataclasses.replace(result.per_example, warnings=warnings))


@dataclass(frozen=True)
class Measured:
    """One user model's evaluation: the result (contract flags included) and its weights' hash."""

    result: EvalResult
    weights_sha256: str


def measure(
    model: nn.Module, dataset: str, suite: str, settings: EvalSettings = EvalSettings(), *,
    contract: ContractConfig = ContractConfig(), data_dir: Path | None = None, progress: Progress | None = None,
) -> Measured:
    """Check the contract, then run `suite` on the first `settings.n_examples` test images of
    `dataset` (default: the paper's protocol for the suite)."""
    if not isinstance(model, nn.Module):
        raise ContractError(f"benchmark needs a torch.nn.Module, got {type(model).__name__}")
    info = data.get_dataset(dataset)
    images, labels = data.load_split(dataset, "test", data_dir)
    n = settings.n_examples if settings.n_examples is not None else default_examples(suite, len(images))
    run_on = resolve_device(settings.device)
    flags = check_contract(model.to(run_on), images, labels, info.classes, contract, run_on, box=info.input_kind == "image")
    sha256 = weights_sha256(model)
    result = evaluate(model, (images, labels), suite, dataclasses.replace(settings, n_examples=n), progress=progress)
    return Measured(with_flags(result, flags), sha256)


def benchmark(
    model: nn.Module,
    dataset: str = "digits",
    eps: float = 8 / 255,
    suite: str = "pgd10",
    leaderboard: str | Path | None = None,
    *,
    name: str | None = None,
    n_examples: int | None = None,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    backend: str = "official",
    seed: int = 0,
    checks: CheckConfig | None = CheckConfig(),
    data_dir: Path | None = None,
) -> ResultRow:
    """Evaluate your own model as `ssmbench eval` evaluates the zoo's, and return its result row.

    `name` labels the row (default: the model's class name) and `leaderboard`, when given, is the
    results file the row is appended to (nothing is recorded without it). The contract checks
    run first (see the module docstring): a model they refuse raises ContractError, one they
    flag is evaluated and its row carries the flag. Defaults follow the paper: Linf eps 8/255,
    PGD-10 on the whole test split, AutoAttack suites on its first 2000 images.
    """
    label = name or type(model).__name__
    settings = EvalSettings(eps=eps, n_examples=n_examples, batch_size=batch_size, device=device, backend=backend,
                            seed=seed, checks=checks)
    measured = measure(model, dataset, suite, settings, data_dir=data_dir)
    row = user_row(uuid.uuid4().hex[:12], label, label, dataset, measured)
    if leaderboard is not None:
        append(leaderboard, [row])
    return row


def user_row(run_id: str, model: str, arch: str, dataset: str, measured: Measured) -> ResultRow:
    """The leaderboard row of a user model: named `model` (as given) and `arch`, hashed by its weights."""
    return labelled_row(run_id, model, ModelLabels(dataset=dataset, arch=arch), measured.result, measured.weights_sha256)
