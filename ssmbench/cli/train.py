"""`ssmbench train ARCH --at METHOD`: adversarial training with a progress bar and resume.

Under torchrun every process runs this command; model_zoo.training.distributed joins them into
one data-parallel job, and rank 0 alone prints (the run directory is written by rank 0 as well).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import Progress, TaskID
from rich.table import Table

from model_zoo import build_model
from model_zoo.ads import ADS_CHOICES
from model_zoo.config import ModelConfig
from model_zoo.datasets import DEFAULT_DATASET, list_datasets
from model_zoo.devices import resolve_device
from model_zoo.errors import UsageError
from model_zoo.training import (
    EpochRecord,
    FreeATParams,
    MartParams,
    Optimization,
    ThreatModel,
    TradesParams,
    TrainConfig,
    TrainObserver,
    YopoParams,
    check_out_dir,
    distributed,
    list_methods,
    seed_everything,
    train,
)
from model_zoo.training.config import PRECISIONS, SELECT_BY
from model_zoo.training.trainer import resolve_precision
from ssmbench import data
from ssmbench.cli._common import console, parse_fraction, progress_bar
from ssmbench.cli._settings import fraction_setting, setting


class _RichObserver(TrainObserver):
    """Renders training: one bar per epoch (samples, samples/s, ETA), one line per finished epoch."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.task: TaskID | None = None

    def on_epoch_start(self, epoch: int, epochs: int, samples: int) -> None:
        if self.task is not None:
            self.progress.remove_task(self.task)
        self.task = self.progress.add_task(f"epoch {epoch}/{epochs}", total=samples)

    def on_batch(self, done: int, total: int, samples: int) -> None:
        if self.task is not None:
            self.progress.update(self.task, completed=done)

    def on_eval_start(self, epoch: int, examples: int) -> None:
        if self.task is not None:
            self.progress.update(self.task, description=f"epoch {epoch} eval ({examples} test images, PGD-10)")

    def on_epoch(self, record: EpochRecord, is_best: bool) -> None:
        self.progress.console.print(
            f"epoch {record.epoch:>3}  loss {record.train_objective:.3f}  "
            f"train {100 * record.train_clean_acc:5.1f}/{100 * record.train_adv_acc:5.1f}  "
            f"test {100 * record.test_clean_acc:5.1f}/{100 * record.test_adv_acc:5.1f}  "
            + (f"val {100 * record.val_clean_acc:5.1f}/{100 * record.val_adv_acc:5.1f}  "
               if record.val_clean_acc is not None and record.val_adv_acc is not None else "")
            + f"{record.samples_per_s:,.0f}/s{'  best' if is_best else ''}",
            markup=False,
        )


def _choose(value: str, choices: list[str], option: str) -> str:
    if value not in choices:
        raise UsageError(f"{option} must be one of {', '.join(choices)}, got {value!r}")
    return value


def _summary(best: EpochRecord, last: EpochRecord) -> Table:
    table = Table(title="Test accuracy (%) on the eval subset", title_justify="left")
    for column in ("checkpoint", "epoch", "clean", "PGD-10"):
        table.add_column(column, justify="right")
    for name, record in (("best", best), ("last", last)):
        table.add_row(name, str(record.epoch), f"{100 * record.test_clean_acc:.2f}", f"{100 * record.test_adv_acc:.2f}")
    clean_diff = 100 * (best.test_clean_acc - last.test_clean_acc)
    robust_diff = 100 * (best.test_adv_acc - last.test_adv_acc)
    table.add_row("Diff (best - last)", "", f"{clean_diff:+.2f}", f"{robust_diff:+.2f}")
    return table


def train_command(
    arch: str = typer.Argument(..., help="Architecture (ssmbench zoo list)."),
    at: str = setting(TrainConfig, "method", "--at"),
    ads: str = typer.Option(ModelConfig.ads, help=f"Adaptive Scaling: {', '.join(ADS_CHOICES)}."),
    attention: bool = typer.Option(ModelConfig.attention, "--attention", help="Add a self-attention layer to every block."),
    mixer_options: str = typer.Option(
        None, "--mixer-options",
        help='Mixer options as a JSON table, e.g. \'{"n_ssm": 1, "train_real": false}\' (S4 as the seed study released it; README: Models).',
    ),
    dataset: str = typer.Option(DEFAULT_DATASET, help=f"Dataset: {', '.join(list_datasets())} ({DEFAULT_DATASET} needs no download)."),
    epochs: int = setting(TrainConfig, "epochs"),
    norm: str = setting(ThreatModel, "norm"),
    eps: str = fraction_setting(ThreatModel, "eps"),
    alpha: str = fraction_setting(ThreatModel, "alpha"),
    steps: int = setting(ThreatModel, "steps"),
    batch_size: int = setting(TrainConfig, "batch_size"),
    lr: float = setting(Optimization, "lr"),
    weight_decay: float = setting(Optimization, "weight_decay"),
    trades_beta: float = setting(TradesParams, "beta", "--trades-beta"),
    mart_beta: float = setting(MartParams, "beta", "--mart-beta"),
    freeat_m: int = setting(FreeATParams, "m", "--freeat-m"),
    freeat_full_epochs: bool = setting(FreeATParams, "full_epochs", "--freeat-full-epochs/--no-freeat-full-epochs"),
    yopo_m: int = setting(YopoParams, "m", "--yopo-m"),
    yopo_n: int = setting(YopoParams, "n", "--yopo-n"),
    eval_examples: int = setting(TrainConfig, "eval_examples"),
    train_examples: int = setting(TrainConfig, "train_examples"),
    val_examples: int = setting(TrainConfig, "val_examples"),
    select_by: str = setting(TrainConfig, "select_by"),
    seed: int = setting(TrainConfig, "seed"),
    grad_clip: float = setting(Optimization, "grad_clip"),
    data_dir: Path = typer.Option(None, help="Where the dataset files live (default $SSMBENCH_DATA)."),
    download: bool = typer.Option(True, help="Download missing dataset files (with checksum checks)."),
    device: str = typer.Option("auto", help="cpu, cuda, cuda:1, ... (auto: cuda when available; under torchrun cuda means cuda:LOCAL_RANK)."),
    precision: str = setting(TrainConfig, "precision"),
    compile_model: bool = typer.Option(False, "--compile", help="torch.compile the model (pays off on long GPU runs; on a CPU compiling takes minutes)."),
    out: Path = typer.Option(None, help="Run directory (default runs/ARCH-AT-ADS[-attn]-DATASET)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last completed epoch."),
) -> None:
    """Train a model with standard or adversarial training; writes best/last checkpoints,
    history.parquet and curves.png into the run directory after every epoch.

    Several processes: torchrun --nproc-per-node 2 -m ssmbench train s4d --at pgd (README: Distributed and multi-node).

    Example: ssmbench train s4d --at pgd --ads tanh --dataset digits --epochs 20
    """
    _choose(at, list_methods(), "--at")
    out = out or Path("runs") / f"{arch}-{at}-{ads}{'-attn' if attention else ''}-{dataset}"
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; a run directory is a folder (checked before training)")
    _choose(precision, list(PRECISIONS), "--precision")
    info = data.get_dataset(_choose(dataset, data.list_datasets(), "--dataset"))
    config = TrainConfig.from_settings(
        method=at, epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay, norm=norm, eps=parse_fraction(eps, "--eps"),
        alpha=None if alpha is None else parse_fraction(alpha, "--alpha"), steps=steps, trades_beta=trades_beta, mart_beta=mart_beta,
        freeat_m=freeat_m, freeat_full_epochs=freeat_full_epochs, yopo_m=yopo_m, yopo_n=yopo_n,
        eval_examples=eval_examples, train_examples=train_examples, val_examples=val_examples, select_by=select_by, seed=seed, grad_clip=grad_clip, precision=precision,
    ).resolved(dataset)
    with distributed.process_group(resolve_device(device)) as target:
        resolve_precision(precision, target)  # refuse bf16 on a CPU before loading anything
        workers = distributed.current()
        say = console if workers.is_main else Console(quiet=True)
        seed_everything(seed)
        model = build_model(arch, dataset, ads=ads, attention=attention, **_mixer_overrides(mixer_options)).to(target)
        distributed.on_main(check_out_dir, out, resume)
        train_data = data.load_split(dataset, "train", data_dir, download)
        test_data = data.load_split(dataset, "test", data_dir, download)
        processes = f" x {workers.world_size} processes" if workers.is_distributed else ""
        say.print("per epoch: train clean/adversarial acc %, test clean/PGD-10 acc %, samples/s")
        if config.val_examples:
            say.print(f"  and val clean/PGD-10 acc % on {config.val_examples} held-out training images (select best)")
        say.print(
            f"{arch} ({ads} AdS{', attention' if attention else ''}) on {dataset}, {at}, {config.threat.label} eps {config.threat.eps:.4f}, "
            f"{config.effective_epochs} epochs, device {target}{processes} -> {out}"
        )
        with progress_bar(say, disable=not workers.is_main) as progress:
            observer = _RichObserver(progress) if workers.is_main else TrainObserver()
            result = train(model, train_data, test_data, config, out, augment=data.augment if info.augment else None,
                           observer=observer, resume=resume, compile_model=compile_model)
    say.print(_summary(result.best, result.last))
    chosen = f"{config.val_examples} held-out training images" if config.val_examples else "the test eval subset (the paper's protocol)"
    say.print(f"best = the epoch with the {SELECT_BY[config.select_by]} on {chosen}")
    say.print(f"wrote {result.best_path}, {result.last_path}, {out / 'history.parquet'}, {out / 'curves.png'}")


def _mixer_overrides(text: str | None) -> dict[str, Any]:
    """--mixer-options as build_model overrides; bad JSON is a usage error, not a traceback."""
    if text is None:
        return {}
    try:
        options = json.loads(text)
    except json.JSONDecodeError as error:
        raise UsageError(f"--mixer-options must be a JSON table such as '{{\"n_ssm\": 1}}': {error.msg}") from None
    if not isinstance(options, dict):
        raise UsageError(f"--mixer-options must be a JSON table such as '{{\"n_ssm\": 1}}', got {text!r}")
    return {"mixer_options": options}


def register(app: typer.Typer) -> None:
    app.command("train")(train_command)
