"""The training loop: any registered AT method, best/last checkpoints, history, exact resume.

    >>> seed_everything(0)
    >>> model = build_model("s4d", "digits")
    >>> result = train(model, (x_train, y_train), (x_test, y_test), TrainConfig(method="pgd", epochs=10), "runs/s4d")

After every epoch the run directory holds:
  best.safetensors   the epoch with the highest PGD-10 robust accuracy on the eval subset
  last.safetensors   the latest epoch
  history.parquet    one EpochRecord per epoch
  curves.png         the paper's eight curves (redrawn at most every 30 s, and at the end)
  state.safetensors  everything needed to continue bit-for-bit: weights, optimizer, scheduler,
                     every RNG, FreeAT's perturbation. Tensors are safetensors entries, the rest is
                     JSON in the same file's metadata, so one atomic rename commits all of it and
                     nothing is ever unpickled.
A kill at any point loses at most the epoch in progress: `train(..., resume=True)` continues from
the last completed epoch and ends with the same weights as an uninterrupted run (on CPU).

The library never prints; progress goes to a TrainObserver that the CLI renders.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_bytes

from model_zoo import checkpoints
from model_zoo.classifier import SequenceClassifier
from model_zoo.errors import RunError, UsageError
from model_zoo.training.history import EpochRecord, plot_curves, write_history
from model_zoo.training.methods import MethodContext, get_method, list_methods
from model_zoo.training.perturb import pgd

Augment = Callable[..., torch.Tensor]  # augment(images, generator=...) -> images
EVAL_STEPS = 10  # the per-epoch robust accuracy is PGD-10, which also selects the best checkpoint
# Drawing curves.png takes about a second; on short epochs it would dominate, so it is redrawn
# at most this often and always after the last epoch (history.parquet is written every epoch).
CURVES_EVERY_S = 30.0
STATE_FORMAT = 1
STATE_KEY = "ssmbench_train_state"
BEST, LAST, HISTORY = "best.safetensors", "last.safetensors", "history.parquet"
CURVES, STATE = "curves.png", "state.safetensors"


@dataclass(frozen=True)
class TrainConfig:
    """Every hyper-parameter of a run; stored in each checkpoint's `training` metadata.

    Defaults are the paper's (DESIGN.md). `eval_examples`/`train_examples`: None = the whole split.
    """

    method: str = "pgd"
    epochs: int = 100
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 2e-4
    eps: float = 8 / 255
    alpha: float = 2 / 255
    steps: int = 10
    trades_beta: float = 6.0
    mart_beta: float = 6.0
    freeat_m: int = 4
    freeat_full_epochs: bool = False
    yopo_m: int = 5
    yopo_n: int = 3
    eval_examples: int | None = None
    train_examples: int | None = None
    seed: int = 0
    grad_clip: float | None = None

    def __post_init__(self) -> None:
        if self.method not in list_methods():
            raise UsageError(f"unknown training method {self.method!r}; choose one of {', '.join(list_methods())}")
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr, "alpha": self.alpha,
                    "steps": self.steps, "freeat_m": self.freeat_m, "yopo_m": self.yopo_m, "yopo_n": self.yopo_n}
        non_negative = {"eps": self.eps, "weight_decay": self.weight_decay, "trades_beta": self.trades_beta,
                        "mart_beta": self.mart_beta}
        optional_positive = {"eval_examples": self.eval_examples, "train_examples": self.train_examples,
                             "grad_clip": self.grad_clip}
        for name, value in positive.items():
            if not value > 0:
                raise UsageError(f"{name} must be > 0, got {value}")
        for name, value in non_negative.items():
            if not value >= 0:
                raise UsageError(f"{name} must be >= 0, got {value}")
        for name, value in optional_positive.items():
            if value is not None and not value > 0:
                raise UsageError(f"{name} must be > 0 when given, got {value}")

    @property
    def effective_epochs(self) -> int:
        """Epochs actually run: FreeAT replays each batch m times, so by default it runs epochs/m
        (rounded up) to cost what PGD-AT costs; freeat_full_epochs runs them all (the paper)."""
        if self.method == "freeat" and not self.freeat_full_epochs:
            return max(1, math.ceil(self.epochs / self.freeat_m))
        return self.epochs

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class TrainObserver:
    """Progress hooks; the defaults do nothing. Subclass and override what you render.

    An exception raised from a hook stops training; the files of completed epochs stay valid.
    """

    def on_epoch_start(self, epoch: int, epochs: int, samples: int) -> None:
        """Epoch `epoch` (1-based) of `epochs` starts; it trains on `samples` images."""

    def on_batch(self, done: int, total: int, samples: int) -> None:
        """`samples` more images trained; `done` of `total` so far this epoch."""

    def on_eval_start(self, epoch: int, examples: int) -> None:
        """Clean and PGD-10 evaluation of `examples` test images starts."""

    def on_epoch(self, record: EpochRecord, is_best: bool) -> None:
        """Epoch finished and every file in the run directory is written."""


@dataclass(frozen=True)
class TrainResult:
    best: EpochRecord
    last: EpochRecord
    history: list[EpochRecord]
    out_dir: Path

    @property
    def best_path(self) -> Path:
        return self.out_dir / BEST

    @property
    def last_path(self) -> Path:
        return self.out_dir / LAST


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), numpy and python's random: call before build_model so that
    one seed fixes the initial weights as well as training."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


@dataclass
class _Run:
    """The mutable state of a run: exactly what state.safetensors stores."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    generators: dict[str, torch.Generator]
    method_state: dict[str, torch.Tensor]
    history: list[EpochRecord]
    best_epoch: int = 0

    @property
    def best(self) -> EpochRecord | None:
        return self.history[self.best_epoch - 1] if self.best_epoch else None


def train(
    model: SequenceClassifier,
    train_data: tuple[torch.Tensor, torch.Tensor],
    test_data: tuple[torch.Tensor, torch.Tensor],
    config: TrainConfig,
    out_dir: str | Path,
    *,
    augment: Augment | None = None,
    observer: TrainObserver | None = None,
    resume: bool = False,
) -> TrainResult:
    """Train `model` (on its current device) with `config.method`; write the run into out_dir.

    train_data/test_data: images in [0, 1] (N, C, H, W) and int64 labels, on any device.
    augment(images, generator=g): applied to every training batch with the run's own generator.
    resume=True continues the run in out_dir; without it an existing run there is refused.
    """
    out_dir = Path(out_dir)
    observer = observer or TrainObserver()
    device = next(model.parameters()).device
    x_train, y_train = (t[: config.train_examples] for t in train_data)
    x_test, y_test = (t[: config.eval_examples] for t in test_data)
    check_out_dir(out_dir, resume)
    run = _new_run(model, config, device)
    if resume:
        _load_state(out_dir / STATE, model, run, config)
    ctx = MethodContext(
        optimizer=run.optimizer, eps=config.eps, alpha=config.alpha, steps=config.steps,
        trades_beta=config.trades_beta, mart_beta=config.mart_beta, freeat_m=config.freeat_m,
        yopo_m=config.yopo_m, yopo_n=config.yopo_n, grad_clip=config.grad_clip,
        generator=run.generators["attack"], state=run.method_state,
    )
    last_plot = -math.inf
    for epoch in range(len(run.history) + 1, config.effective_epochs + 1):
        observer.on_epoch_start(epoch, config.effective_epochs, len(x_train))
        started = time.perf_counter()
        lr = run.optimizer.param_groups[0]["lr"]
        sums = _train_epoch(model, x_train, y_train, config, ctx, run, augment, observer, epoch, out_dir)
        train_seconds = time.perf_counter() - started
        run.scheduler.step()
        observer.on_eval_start(epoch, len(x_test))
        evaluation = evaluate_pgd10(model, x_test, y_test, config.eps, config.alpha, config.batch_size, config.seed)
        record = EpochRecord(
            epoch=epoch, lr=lr, **sums, **evaluation,
            seconds=time.perf_counter() - started, samples_per_s=len(x_train) / train_seconds,
        )
        run.history.append(record)
        is_best = run.best is None or record.test_adv_acc > run.best.test_adv_acc
        if is_best:
            run.best_epoch = epoch
        plot = epoch == config.effective_epochs or time.monotonic() - last_plot >= CURVES_EVERY_S
        _write_epoch(model, run, config, out_dir, is_best, augment is not None, len(x_test), plot)
        last_plot = time.monotonic() if plot else last_plot
        observer.on_epoch(record, is_best)
    return TrainResult(best=run.best, last=run.history[-1], history=list(run.history), out_dir=out_dir)


def check_out_dir(out_dir: str | Path, resume: bool) -> None:
    """A fresh run must not overwrite another run; a resumed one needs its state file."""
    state = Path(out_dir) / STATE
    if resume and not state.is_file():
        raise UsageError(f"{state}: no training state to resume; start without resume (--resume)")
    if not resume and state.exists():
        raise UsageError(f"{out_dir} already holds a training run; resume it (--resume) or choose another output directory")


def _new_run(model: SequenceClassifier, config: TrainConfig, device: torch.device) -> _Run:
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.effective_epochs)
    # Separate streams so that e.g. turning augmentation on does not change the attack noise.
    generators = {
        "shuffle": torch.Generator().manual_seed(config.seed),
        "augment": torch.Generator().manual_seed(config.seed + 1),
        "attack": torch.Generator(device).manual_seed(config.seed + 2),
    }
    return _Run(optimizer, scheduler, generators, method_state={}, history=[])


def _train_epoch(
    model: SequenceClassifier, x_train: torch.Tensor, y_train: torch.Tensor, config: TrainConfig,
    ctx: MethodContext, run: _Run, augment: Augment | None, observer: TrainObserver, epoch: int, out_dir: Path,
) -> dict[str, float]:
    """One pass over the training set; returns the epoch's train_* means."""
    method = get_method(config.method)
    device = next(model.parameters()).device
    model.train()
    totals = dict.fromkeys(("objective", "clean_loss", "clean_correct", "adv_loss", "adv_correct"), 0.0)
    order = torch.randperm(len(x_train), generator=run.generators["shuffle"])
    batches = math.ceil(len(x_train) / config.batch_size)
    for batch in range(batches):
        rows = order[batch * config.batch_size : (batch + 1) * config.batch_size]
        x = x_train[rows]
        if augment is not None:
            x = augment(x, generator=run.generators["augment"])
        x, y = x.to(device), y_train[rows].to(device)
        with torch.no_grad():
            clean_logits = model(x)
        out = method(model, x, y, ctx)
        _check_finite(model, out.loss, epoch, batch + 1, batches, out_dir, len(run.history))
        n = len(y)
        totals["objective"] += out.loss.item() * n
        totals["clean_loss"] += F.cross_entropy(clean_logits, y, reduction="sum").item()
        totals["clean_correct"] += (clean_logits.argmax(1) == y).sum().item()
        totals["adv_loss"] += F.cross_entropy(out.logits_adv, y, reduction="sum").item()
        totals["adv_correct"] += (out.logits_adv.argmax(1) == y).sum().item()
        observer.on_batch(batch * config.batch_size + n, len(x_train), n)
    count = len(x_train)
    return {
        "train_objective": totals["objective"] / count,
        "train_clean_loss": totals["clean_loss"] / count,
        "train_clean_acc": totals["clean_correct"] / count,
        "train_adv_loss": totals["adv_loss"] / count,
        "train_adv_acc": totals["adv_correct"] / count,
    }


def _check_finite(
    model: SequenceClassifier, loss: torch.Tensor, epoch: int, batch: int, batches: int, out_dir: Path, last_good: int
) -> None:
    """Stop at the first non-finite loss or weight, before anything of this epoch is written."""
    what = None
    if not torch.isfinite(loss):
        what = f"loss {loss.item()}"
    elif not all(torch.isfinite(p).all() for p in model.parameters()):
        what = "weights"
    if what is not None:
        kept = f"the checkpoints in {out_dir} are from epoch {last_good}" if last_good else "no checkpoint was written"
        raise RunError(
            f"training diverged: non-finite {what} at epoch {epoch}, batch {batch}/{batches}; {kept}. "
            "Lower --lr or set --grad-clip"
        )


def evaluate_pgd10(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, alpha: float, batch_size: int, seed: int
) -> dict[str, float]:
    """Clean and PGD-10 loss/accuracy on (x, y) in eval mode, with the same attack noise every epoch."""
    device = next(model.parameters()).device
    generator = torch.Generator(device).manual_seed(seed + 3)
    was_training = model.training
    model.eval()
    totals = dict.fromkeys(("test_clean_loss", "test_clean_acc", "test_adv_loss", "test_adv_acc"), 0.0)
    for start in range(0, len(x), batch_size):
        xb, yb = x[start : start + batch_size].to(device), y[start : start + batch_size].to(device)
        x_adv = pgd(model, xb, yb, eps, alpha, EVAL_STEPS, generator=generator)
        with torch.no_grad():
            for kind, inputs in (("clean", xb), ("adv", x_adv)):
                logits = model(inputs)
                totals[f"test_{kind}_loss"] += F.cross_entropy(logits, yb, reduction="sum").item()
                totals[f"test_{kind}_acc"] += (logits.argmax(1) == yb).sum().item()
    model.train(was_training)
    return {key: value / max(len(x), 1) for key, value in totals.items()}


def _checkpoint_meta(
    model: SequenceClassifier, record: EpochRecord, config: TrainConfig, kind: str, augmented: bool, eval_examples: int
) -> checkpoints.CheckpointMeta:
    training = {
        **config.to_dict(),
        "threat_model": "Linf",
        "effective_epochs": config.effective_epochs,
        "optimizer": "AdamW",
        "schedule": "cosine",
        "augment": augmented,
        "eval_attack": f"PGD-{EVAL_STEPS}",
    }
    metrics = {
        "clean_acc": record.test_clean_acc,
        "pgd10_acc": record.test_adv_acc,
        "clean_loss": record.test_clean_loss,
        "pgd10_loss": record.test_adv_loss,
        "eval_examples": eval_examples,
        "train_clean_acc": record.train_clean_acc,
        "train_adv_acc": record.train_adv_acc,
    }
    return checkpoints.CheckpointMeta(
        config=model.config, training=training, epoch=record.epoch, kind=kind, seed=config.seed, metrics=metrics
    )


def _write_epoch(
    model: SequenceClassifier, run: _Run, config: TrainConfig, out_dir: Path, is_best: bool, augmented: bool,
    eval_examples: int, plot: bool,
) -> None:
    """Checkpoints, history and curves first, the resume state last: a kill in between only
    makes the resumed run redo (identically) the epoch whose files were already written."""
    record = run.history[-1]
    if is_best:
        checkpoints.save(model, out_dir / BEST, _checkpoint_meta(model, record, config, "best", augmented, eval_examples))
    checkpoints.save(model, out_dir / LAST, _checkpoint_meta(model, record, config, "last", augmented, eval_examples))
    write_history(run.history, out_dir / HISTORY)
    if plot:
        plot_curves(run.history, out_dir / CURVES, title=f"{model.config.arch} {config.method} on {model.config.dataset}")
    _save_state(out_dir / STATE, model, run, config)


def _flatten(
    prefix: str, tensors: dict[str, torch.Tensor], out: dict[str, torch.Tensor], complex_names: list[str]
) -> None:
    """Add tensors under prefix; complex ones as real views (safetensors has no complex dtype)."""
    for name, tensor in tensors.items():
        tensor = tensor.detach().cpu()
        if tensor.is_complex():
            complex_names.append(f"{prefix}{name}")
            tensor = torch.view_as_real(tensor)
        out[f"{prefix}{name}"] = tensor.contiguous().clone()


def _save_state(path: Path, model: SequenceClassifier, run: _Run, config: TrainConfig) -> None:
    tensors: dict[str, torch.Tensor] = {}
    complex_names: list[str] = []
    _flatten("model.", model.state_dict(), tensors, complex_names)
    _flatten("method.", run.method_state, tensors, complex_names)
    optimizer_state = run.optimizer.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for pid, entries in optimizer_state["state"].items():
        _flatten(f"optim.{pid}.", {k: v for k, v in entries.items() if torch.is_tensor(v)}, tensors, complex_names)
        scalars[str(pid)] = {k: v for k, v in entries.items() if not torch.is_tensor(v)}
    generator_states = {name: g.get_state() for name, g in run.generators.items()}
    generator_states["torch_cpu"] = torch.get_rng_state()
    if torch.cuda.is_available():
        generator_states.update({f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    _flatten("rng.", generator_states, tensors, complex_names)
    numpy_state = np.random.get_state()
    document = {
        "format": STATE_FORMAT,
        "config": config.to_dict(),
        "model_config": model.config.to_dict(),
        "history": [r.to_dict() for r in run.history],
        "best_epoch": run.best_epoch,
        "optimizer_param_groups": optimizer_state["param_groups"],
        "optimizer_scalars": scalars,
        "scheduler": run.scheduler.state_dict(),
        "numpy_rng": [numpy_state[0], numpy_state[1].tolist(), *numpy_state[2:]],
        "python_rng": random.getstate(),
        "complex": complex_names,
    }
    checkpoints.atomic_write_bytes(path, safetensors_bytes(tensors, metadata={STATE_KEY: json.dumps(document)}))


def _read_state(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    try:
        with safe_open(str(path), framework="pt") as handle:
            document = json.loads((handle.metadata() or {})[STATE_KEY])
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except (SafetensorError, OSError, ValueError, KeyError) as exc:
        raise UsageError(f"{path}: not a readable ssmbench training state ({exc})") from None
    if document.get("format") != STATE_FORMAT:
        raise UsageError(f"{path}: training state format {document.get('format')} is not {STATE_FORMAT}")
    for name in document["complex"]:
        tensors[name] = torch.view_as_complex(tensors[name])
    return document, tensors


def _section(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {name[len(prefix):]: t for name, t in tensors.items() if name.startswith(prefix)}


def _load_state(path: Path, model: SequenceClassifier, run: _Run, config: TrainConfig) -> None:
    """Restore `run` and the model's weights; refuse a state saved with other settings."""
    document, tensors = _read_state(path)
    changed = sorted(k for k, v in config.to_dict().items() if document["config"].get(k) != v)
    if changed:
        raise UsageError(f"{path}: resume with the settings of the saved run; these differ: {', '.join(changed)}")
    if document["model_config"] != json.loads(json.dumps(model.config.to_dict())):
        saved = document["model_config"]["arch"]
        raise UsageError(f"{path}: the saved run trained a different model ({saved} with other settings)")
    device = next(model.parameters()).device
    model.load_state_dict(_section(tensors, "model."), strict=True)
    run.method_state.update({k: v.to(device) for k, v in _section(tensors, "method.").items()})
    _load_optimizer(run.optimizer, document, tensors)
    run.scheduler.load_state_dict(document["scheduler"])
    rng = _section(tensors, "rng.")
    for name, generator in run.generators.items():
        generator.set_state(rng[name])
    torch.set_rng_state(rng["torch_cpu"])
    if torch.cuda.is_available():
        torch.cuda.set_rng_state_all([rng[f"cuda{i}"] for i in range(torch.cuda.device_count()) if f"cuda{i}" in rng])
    kind, keys, *rest = document["numpy_rng"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), *rest))
    version, internal, gauss = document["python_rng"]
    random.setstate((version, tuple(internal), gauss))
    run.history[:] = [EpochRecord(**row) for row in document["history"]]
    run.best_epoch = document["best_epoch"]


def _load_optimizer(
    optimizer: torch.optim.Optimizer, document: dict[str, Any], tensors: dict[str, torch.Tensor]
) -> None:
    state: dict[int, dict[str, Any]] = {}
    for pid, scalars in document["optimizer_scalars"].items():
        state[int(pid)] = {**scalars, **_section(tensors, f"optim.{pid}.")}
    groups = []
    for current, saved in zip(optimizer.param_groups, document["optimizer_param_groups"]):
        # JSON turned tuples (AdamW's betas) into lists; give them their type back.
        groups.append({k: tuple(v) if isinstance(current.get(k), tuple) else v for k, v in saved.items()})
    optimizer.load_state_dict({"state": state, "param_groups": groups})
