"""The training loop: any registered AT method, best/last checkpoints, history, exact resume.

    >>> seed_everything(0)
    >>> model = build_model("s4d", "digits")
    >>> result = train(model, (x_train, y_train), (x_test, y_test), TrainConfig(method="pgd", epochs=10), "runs/s4d")

After every epoch the run directory holds:
  best.safetensors   the epoch with the highest PGD-10 robust accuracy (select_by "loss": the
                     lowest PGD-10 cross-entropy) on the selection set:
                     the held-out training images with `val_examples` > 0 ("selection": "val"),
                     else the test eval subset (the paper's protocol, "selection": "test")
  last.safetensors   the latest epoch
  history.parquet    one EpochRecord per epoch
  curves.png         the paper's eight curves (redrawn at most every 30 s, and at the end)
  state.safetensors  everything needed to continue bit-for-bit: weights, optimizer, scheduler,
                     every RNG, FreeAT's perturbation, in one file committed by one atomic rename
                     (`model_zoo.training.state`).
A kill at any point loses at most the epoch in progress: `train(..., resume=True)` continues from
the last completed epoch and ends with the same weights as an uninterrupted run (on CPU). This
holds between any two writes: a fresh run writes its state (epoch 0) before anything else, every
file is replaced atomically, and each epoch writes its checkpoints, history and curves before its
state, so a kill among them leaves the previous epoch's state, from which the epoch is redone
identically and its files rewritten.

Model selection without test leakage: with `val_examples` = N > 0, N training images chosen by a
seeded permutation (`hold_out`) are never trained on; PGD-10 on them picks the best checkpoint,
and the test images are only scored (their per-epoch numbers are still recorded).

The library never prints; progress goes to a TrainObserver that the CLI renders.

Under torchrun (see `distributed`) the same call trains data-parallel: every rank runs train()
on the same data and model; each global batch is shuffled identically everywhere and split into
one shard per rank, gradients are averaged by DistributedDataParallel, the per-epoch evaluation is
split the same way and summed, and rank 0 alone reads the resume state and writes the run
directory. On CPU the K-process run ends with the weights of the one-process run (up to float
rounding), and a run can be resumed with another number of processes.

Precision: `config.precision` "auto" trains with bf16 autocast on CUDA and fp32 elsewhere. Autocast
covers the AT method's passes; the attack's input gradients are fp32 anyway (perturb.py turns
autocast off there), and every evaluation is fp32.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from model_zoo import checkpoints, labels
from model_zoo.bounds import bounds_of
from model_zoo.classifier import SequenceClassifier
from model_zoo.errors import RunError, UsageError
from model_zoo.training import distributed, state
from model_zoo.training.config import PRECISIONS, TrainConfig
from model_zoo.training.distributed import DataParallel, Workers
from model_zoo.training.history import EpochRecord, plot_curves, write_history
from model_zoo.training.methods import MethodContext, get_method
from model_zoo.training.perturb import pgd
from model_zoo.training.state import RunState

Augment = Callable[..., torch.Tensor]  # augment(images, generator=...) -> images
EVAL_STEPS = 10  # the per-epoch robust accuracy is PGD-10, which also selects the best checkpoint
# Drawing curves.png takes about a second; on short epochs it would dominate, so it is redrawn
# at most this often and always after the last epoch (history.parquet is written every epoch).
CURVES_EVERY_S = 30.0
BEST, LAST, HISTORY = "best.safetensors", "last.safetensors", "history.parquet"
CURVES, STATE = "curves.png", "state.safetensors"


def _val_pgd10(record: EpochRecord) -> float:
    if record.val_adv_acc is None:  # "val" selection evaluates the held-out images every epoch
        raise RunError(f"epoch {record.epoch} has no PGD-10 accuracy on the held-out images to select on")
    return record.val_adv_acc


def _val_pgd10_loss(record: EpochRecord) -> float:
    if record.val_adv_loss is None:
        raise RunError(f"epoch {record.epoch} has no PGD-10 loss on the held-out images to select on")
    return -record.val_adv_loss


# The metric that ranks epochs for best.safetensors (higher is better; a tie keeps the earlier
# epoch), by TrainConfig.selection.
SELECTION_SCORES: dict[str, Callable[[EpochRecord], float]] = {
    "val": _val_pgd10,
    "test": lambda record: record.test_adv_acc,
    "val-loss": _val_pgd10_loss,
    "test-loss": lambda record: -record.test_adv_loss,
}


def hold_out(n: int, n_val: int, seed: int) -> torch.Tensor:
    """The sorted indices of the n_val of n training images held out for model selection: the
    first n_val of `torch.randperm(n)` under a generator seeded with `seed`."""
    if not 0 < n_val < n:
        raise UsageError(f"val_examples must be between 1 and {n - 1} (the training split holds {n} images), got {n_val}")
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:n_val].sort().values


def indices_sha256(indices: torch.Tensor) -> str:
    """sha256 of the indices written as decimal numbers joined by commas (e.g. "3,17,40")."""
    return hashlib.sha256(",".join(str(i) for i in indices.tolist()).encode()).hexdigest()


@dataclass(frozen=True)
class _Split:
    """The training split divided into the images trained on and those held out for selection."""

    train: tuple[torch.Tensor, torch.Tensor]
    val: tuple[torch.Tensor, torch.Tensor]
    val_indices: torch.Tensor


def _split(train_data: tuple[torch.Tensor, torch.Tensor], config: TrainConfig) -> _Split:
    images, labels = train_data
    if not config.val_examples:  # views, not copies: a CIFAR-sized split is hundreds of MB
        return _Split(train=(images[: config.train_examples], labels[: config.train_examples]),
                      val=(images[:0], labels[:0]), val_indices=torch.zeros(0, dtype=torch.long))
    held = hold_out(len(images), config.val_examples, config.seed)
    keep = torch.ones(len(images), dtype=torch.bool)
    keep[held] = False
    kept = keep.nonzero().flatten()[: config.train_examples]
    return _Split(train=(images[kept], labels[kept]), val=(images[held], labels[held]), val_indices=held)


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


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """The autocast dtype of the training passes: bfloat16 or float32 (= no autocast).

    bf16 only on CUDA: CPU autocast in bf16 is slower than fp32 for these models, and GPUs
    without bf16 (before Ampere) fall back to fp32 under "auto".
    """
    if precision not in PRECISIONS:
        raise UsageError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    if precision == "bf16" and not cuda_bf16:
        raise UsageError(f"precision bf16 needs a CUDA device with bf16 support, not {device}; use fp32 or auto")
    return torch.bfloat16 if precision == "bf16" or (precision == "auto" and cuda_bf16) else torch.float32


@contextmanager
def _autocast(device: torch.device, dtype: torch.dtype) -> Iterator[None]:
    """Autocast to dtype, or explicitly off for float32 (so a caller's autocast does not leak in)."""
    with torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype != torch.float32):
        yield


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), numpy and python's random: call before build_model so that
    one seed fixes the initial weights as well as training."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


@dataclass(frozen=True)
class _Setup:
    """What every batch of a run needs besides the data and the run state."""

    model: SequenceClassifier  # the plain model: metrics, evaluation, checkpoints
    trained: nn.Module  # what the AT method calls: the model, or its DataParallel wrapper under torchrun
    config: TrainConfig
    ctx: MethodContext
    augment: Augment | None
    observer: TrainObserver
    out_dir: Path
    autocast: torch.dtype
    workers: Workers
    device: torch.device
    val_indices: torch.Tensor


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
    compile_model: bool = False,
) -> TrainResult:
    """Train `model` (on its current device) with `config.method`; write the run into out_dir.

    train_data/test_data: images in [0, 1] (N, C, H, W), or raw series (N, C, L) for a sequence
    model (which first fits its input normalization on the training part), and int64 labels.
    With config.val_examples > 0 part of train_data is held out to select the best checkpoint.
    augment(images, generator=g): applied to every training batch with the run's own generator.
    resume=True continues the run in out_dir; without it an existing run there is refused.
    compile_model=True compiles the model in place (`model.compile()`, i.e. torch.compile) for
    training and the per-epoch evaluation; the first batches wait for the compiler (on a CPU,
    inductor builds C++ kernels: tens of seconds to minutes, rarely worth it for short runs).
    Under torchrun, call it on every rank with the model on the rank's device (module docstring).
    """
    out_dir = Path(out_dir)
    config = config.resolved(model.config.dataset)
    workers = distributed.current()
    device = next(model.parameters()).device
    split = _split(train_data, config)
    (x_train, y_train), (x_val, y_val) = split.train, split.val
    x_test, y_test = (t[: config.eval_examples] for t in test_data)
    _check_shardable(len(x_train), config.batch_size, workers)
    autocast = resolve_precision(config.precision, device)
    distributed.on_main(check_out_dir, out_dir, resume)
    run = _new_run(model, config)
    if resume:
        try:
            state.load_state(out_dir / STATE, *distributed.on_main(state.read_state, out_dir / STATE), model, run, config, workers)
        except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as exc:
            if isinstance(exc, UsageError):
                raise
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise UsageError(f"{out_dir / STATE}: a damaged or edited training state ({reason}); restart the run without --resume") from None
    else:  # epoch 0's state, before any other file: a kill from here on leaves a resumable run
        if model.is_sequence:  # the z-normalization and the eps scale: the examples trained on, never test or val
            model.fit_input(x_train)
        distributed.on_main(state.save_state, out_dir / STATE, model, run, run.method_state, config)
    if compile_model:
        model.compile()
    ctx = MethodContext(optimizer=run.optimizer, params=config.method_params, threat=config.threat,
                        grad_clip=config.optim.grad_clip, state=run.method_state, bounds=bounds_of(model))
    setup = _Setup(
        model=model, trained=DataParallel(model, device) if workers.is_distributed else model, config=config, ctx=ctx,
        augment=augment, observer=observer or TrainObserver(), out_dir=out_dir, autocast=autocast, workers=workers,
        device=device, val_indices=split.val_indices,
    )
    score = SELECTION_SCORES[config.selection]
    last_plot = -math.inf
    for epoch in range(len(run.history) + 1, config.effective_epochs + 1):
        setup.observer.on_epoch_start(epoch, config.effective_epochs, len(x_train))
        started = time.perf_counter()
        lr = run.optimizer.param_groups[0]["lr"]
        sums = _train_epoch(setup, run, x_train, y_train, epoch)
        train_seconds = time.perf_counter() - started
        run.scheduler.step()
        setup.observer.on_eval_start(epoch, len(x_test))
        evaluation = evaluate_pgd10(model, x_test, y_test, config.threat.eps, config.threat.step_size, config.batch_size, config.seed,
                                    norm=config.threat.norm)
        if len(x_val):
            evaluation |= evaluate_pgd10(model, x_val, y_val, config.threat.eps, config.threat.step_size, config.batch_size, config.seed,
                                         split="val", norm=config.threat.norm)
        record = EpochRecord(
            epoch=epoch, lr=lr, **sums, **evaluation,
            seconds=time.perf_counter() - started, samples_per_s=len(x_train) / train_seconds,
        )
        run.history.append(record)
        is_best = run.best is None or score(record) > score(run.best)
        if is_best:
            run.best_epoch = epoch
        plot = epoch == config.effective_epochs or time.monotonic() - last_plot >= CURVES_EVERY_S
        method_state = distributed.gather_rows(run.method_state) if workers.is_distributed else run.method_state
        distributed.on_main(_write_epoch, setup, run, method_state, is_best, len(x_test), plot)
        last_plot = time.monotonic() if plot else last_plot
        setup.observer.on_epoch(record, is_best)
    assert run.best is not None  # every run has at least one epoch, and the first is the best so far
    return TrainResult(best=run.best, last=run.history[-1], history=list(run.history), out_dir=out_dir)


def check_out_dir(out_dir: str | Path, resume: bool) -> None:
    """A fresh run must not overwrite another run; a resumed one needs its state file."""
    state_file = Path(out_dir) / STATE
    if resume and not state_file.is_file():
        raise UsageError(f"{state_file}: no training state to resume; start without resume (--resume)")
    if not resume and state_file.exists():
        raise UsageError(f"{out_dir} already holds a training run; resume it (--resume) or choose another output directory")


def _check_shardable(n: int, batch_size: int, workers: Workers) -> None:
    """Every rank needs rows in every batch: DDP's backward pass waits for all of them."""
    if batch_size % workers.world_size:
        raise UsageError(f"batch size {batch_size} (the global batch) must be divisible by the number of processes, {workers.world_size}")
    last = n % batch_size
    if 0 < last < workers.world_size:
        raise UsageError(f"the last batch would hold {last} of the {n} training images, fewer than the {workers.world_size} "
                         "processes; change the number of training examples or the batch size")


def _new_run(model: SequenceClassifier, config: TrainConfig) -> RunState:
    optimizer, scheduler = config.optim.build(model.parameters(), config.effective_epochs)
    # Separate streams so that e.g. turning augmentation on does not change the data order. The
    # attack noise has no running stream: each batch's comes from (seed, epoch, batch), so a
    # rank can draw its shard's part of it (distributed.shard_generator).
    generators = {
        "shuffle": torch.Generator().manual_seed(config.seed),
        "augment": torch.Generator().manual_seed(config.seed + 1),
    }
    return RunState(optimizer, scheduler, generators, method_state={}, history=[])


def _train_epoch(
    setup: _Setup, run: RunState, x_train: torch.Tensor, y_train: torch.Tensor, epoch: int
) -> dict[str, float]:
    """One pass over the training set; returns the epoch's train_* means (over all ranks).

    Every rank draws the same order and augments the whole global batch with the same generator
    (so the streams stay in step with a one-process run), then trains on its shard of it.
    """
    config, device, workers = setup.config, setup.device, setup.workers
    method = get_method(config.method)
    setup.model.train()
    totals = [0.0] * 5  # objective, clean_loss, clean_correct, adv_loss, adv_correct: sums over examples
    order = torch.randperm(len(x_train), generator=run.generators["shuffle"])
    batches = math.ceil(len(x_train) / config.batch_size)
    for batch in range(batches):
        rows = order[batch * config.batch_size : (batch + 1) * config.batch_size]
        x = x_train[rows]
        if setup.augment is not None:
            x = setup.augment(x, generator=run.generators["augment"])
        start, stop = distributed.shard_bounds(len(rows), workers)
        x, y = x[start:stop].to(device), y_train[rows[start:stop]].to(device)
        if isinstance(setup.trained, DataParallel):
            setup.trained.share.weight = len(y) / len(rows)
        noise = distributed.shard_generator((config.seed, "train", epoch, batch), device, start * x[0].numel(), workers)
        with torch.no_grad():
            clean_logits = setup.model(x)
        with _autocast(device, setup.autocast):
            out = method(setup.trained, x, y, dataclasses.replace(setup.ctx, generator=noise))
        logits_adv = out.logits_adv.float()
        sums = distributed.sum_across([
            out.loss.item() * len(y),
            F.cross_entropy(clean_logits, y, reduction="sum").item(),
            (clean_logits.argmax(1) == y).sum().item(),
            F.cross_entropy(logits_adv, y, reduction="sum").item(),
            (logits_adv.argmax(1) == y).sum().item(),
        ], device)
        _check_finite(setup.model, sums[0] / len(rows), epoch, batch + 1, batches, setup.out_dir, len(run.history))
        totals = [total + value for total, value in zip(totals, sums)]
        setup.observer.on_batch(batch * config.batch_size + len(rows), len(x_train), len(rows))
    names = ("train_objective", "train_clean_loss", "train_clean_acc", "train_adv_loss", "train_adv_acc")
    return {name: total / len(x_train) for name, total in zip(names, totals)}


def _check_finite(
    model: SequenceClassifier, objective: float, epoch: int, batch: int, batches: int, out_dir: Path, last_good: int
) -> None:
    """Stop at the first non-finite objective or weight, before anything of this epoch is written.

    `objective` is the batch's over all ranks and the weights are the same on every rank, so
    every rank stops at the same batch.
    """
    what = None
    if not math.isfinite(objective):
        what = f"loss {objective}"
    elif not all(torch.isfinite(p).all() for p in model.parameters()):
        what = "weights"
    if what is not None:
        kept = f"the checkpoints in {out_dir} are from epoch {last_good}" if last_good else "no checkpoint was written"
        raise RunError(
            f"training diverged: non-finite {what} at epoch {epoch}, batch {batch}/{batches}; {kept}. "
            "Lower --lr or set --grad-clip"
        )


def evaluate_pgd10(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, alpha: float, batch_size: int, seed: int,
    split: str = "test", norm: str = "linf",
) -> dict[str, float]:
    """Clean and PGD-10 (in the threat model's `norm`) loss/accuracy on (x, y) in eval mode and fp32,
    with the same attack noise every epoch, named as EpochRecord's `<split>_*` fields ("test" or "val").
    Under torchrun each batch is split across the ranks and the sums are added up,
    so every rank gets the one-process numbers (on CPU: the same noise, see shard_generator)."""
    device = next(model.parameters()).device
    workers = distributed.current()
    was_training = model.training
    model.eval()
    totals = [0.0] * 4  # clean loss, clean correct, adversarial loss, adversarial correct
    with _autocast(device, torch.float32):
        for batch, begin in enumerate(range(0, len(x), batch_size)):
            start, stop = distributed.shard_bounds(min(batch_size, len(x) - begin), workers)
            if start == stop:
                continue  # fewer examples left than ranks; there is no collective in this loop
            xb, yb = x[begin + start : begin + stop].to(device), y[begin + start : begin + stop].to(device)
            noise = distributed.shard_generator((seed, "eval", batch), device, start * xb[0].numel(), workers)
            x_adv = pgd(model, xb, yb, eps, alpha, EVAL_STEPS, generator=noise, norm=norm, bounds=bounds_of(model))
            with torch.no_grad():
                for offset, inputs in ((0, xb), (2, x_adv)):
                    logits = model(inputs)
                    totals[offset] += F.cross_entropy(logits, yb, reduction="sum").item()
                    totals[offset + 1] += (logits.argmax(1) == yb).sum().item()
    model.train(was_training)
    totals = distributed.sum_across(totals, device)
    names = ("clean_loss", "clean_acc", "adv_loss", "adv_acc")
    return {f"{split}_{name}": total / max(len(x), 1) for name, total in zip(names, totals)}


def _checkpoint_meta(setup: _Setup, record: EpochRecord, kind: str, eval_examples: int) -> checkpoints.CheckpointMeta:
    config = setup.config
    training = {
        **config.to_dict(),
        # Absent means the unit box: image runs keep the metadata they had before sequences existed.
        **({"box": setup.ctx.bounds.box} if setup.ctx.bounds.box != "unit" else {}),
        "augment": setup.augment is not None,
        "eval_attack": f"PGD-{EVAL_STEPS}",
        "autocast": "bf16" if setup.autocast == torch.bfloat16 else "fp32",
        "processes": setup.workers.world_size,
        "selection": config.selection,
    }
    if config.val_examples:
        training |= {"val_split_seed": config.seed, "val_indices_sha256": indices_sha256(setup.val_indices)}
    metrics: dict[str, Any] = {
        "clean_acc": record.test_clean_acc,
        "pgd10_acc": record.test_adv_acc,
        "clean_loss": record.test_clean_loss,
        "pgd10_loss": record.test_adv_loss,
        "eval_examples": eval_examples,
        "train_clean_acc": record.train_clean_acc,
        "train_adv_acc": record.train_adv_acc,
    }
    if config.val_examples:
        metrics |= {"val_clean_acc": record.val_clean_acc, "val_pgd10_acc": record.val_adv_acc,
                    "val_examples": config.val_examples}
    return checkpoints.CheckpointMeta(
        config=setup.model.config, training=training, epoch=record.epoch, kind=kind, seed=config.seed, metrics=metrics
    )


def _write_epoch(
    setup: _Setup, run: RunState, method_state: dict[str, torch.Tensor], is_best: bool, eval_examples: int, plot: bool
) -> None:
    """Checkpoints, history and curves first, the resume state last: a kill in between only
    makes the resumed run redo (identically) the epoch whose files were already written, from the
    previous epoch's state (epoch 0's is written when the run starts).

    Rank 0 alone calls this (distributed.on_main); `method_state` holds all ranks' rows."""
    model, out_dir, record = setup.model, setup.out_dir, run.history[-1]
    if is_best:
        checkpoints.save(model, out_dir / BEST, _checkpoint_meta(setup, record, "best", eval_examples))
    checkpoints.save(model, out_dir / LAST, _checkpoint_meta(setup, record, "last", eval_examples))
    write_history(run.history, out_dir / HISTORY)
    if plot:
        plot_curves(run.history, out_dir / CURVES, title=labels.run_title(model.config, setup.config.method, setup.config.seed))
    state.save_state(out_dir / STATE, model, run, method_state, setup.config)
