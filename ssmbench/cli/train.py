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
from rich.progress import Progress
from rich.table import Table

from model_zoo import build_model
from model_zoo.devices import resolve_device
from model_zoo.errors import UsageError
from model_zoo.training import EpochRecord, TrainConfig, TrainObserver, check_out_dir, distributed, list_methods, seed_everything, train
from model_zoo.training.trainer import PRECISIONS, resolve_precision
from ssmbench import data
from ssmbench.cli._common import console, parse_fraction, progress_bar

# The paper trained 100 epochs on MNIST-like data and 180 on CIFAR-10 / Tiny-ImageNet.
PAPER_EPOCHS = {"cifar10": 180, "tiny-imagenet": 180}
DEFAULT_EPOCHS = 100



class _RichObserver(TrainObserver):
    """Renders training: one bar per epoch (samples, samples/s, ETA), one line per finished epoch."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.task: int | None = None

    def on_epoch_start(self, epoch: int, epochs: int, samples: int) -> None:
        if self.task is not None:
            self.progress.remove_task(self.task)
        self.task = self.progress.add_task(f"epoch {epoch}/{epochs}", total=samples)

    def on_batch(self, done: int, total: int, samples: int) -> None:
        self.progress.update(self.task, completed=done)

    def on_eval_start(self, epoch: int, examples: int) -> None:
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
    at: str = typer.Option("pgd", "--at", help=f"Training method: {', '.join(list_methods())}."),
    ads: str = typer.Option("none", help="Adaptive Scaling: none, relu, sigmoid or tanh."),
    attention: bool = typer.Option(False, "--attention", help="Add a self-attention layer to every block."),
    mixer_options: str = typer.Option(
        None, "--mixer-options",
        help='Mixer options as a JSON table, e.g. \'{"n_ssm": 1, "train_real": false}\' (S4 as the seed study released it; README: Models).',
    ),
    dataset: str = typer.Option("digits", help="Dataset (digits needs no download)."),
    epochs: int = typer.Option(None, help="Epochs (default: the paper's, 100; 180 on cifar10/tiny-imagenet)."),
    eps: str = typer.Option("8/255", help="Linf radius for training and the PGD-10 eval, e.g. 8/255."),
    alpha: str = typer.Option("2/255", help="Attack step size, e.g. 2/255."),
    steps: int = typer.Option(10, help="Attack steps during training (pgd, trades, mart)."),
    batch_size: int = typer.Option(256, help="Training batch size (global: under torchrun each of K processes takes 1/K of it)."),
    lr: float = typer.Option(1e-3, help="AdamW learning rate (cosine schedule to 0)."),
    weight_decay: float = typer.Option(2e-4, help="AdamW weight decay."),
    trades_beta: float = typer.Option(6.0, help="TRADES KL weight."),
    mart_beta: float = typer.Option(6.0, help="MART KL weight."),
    freeat_m: int = typer.Option(4, help="FreeAT replays per batch."),
    freeat_full_epochs: bool = typer.Option(
        False, help="FreeAT: run all epochs (the paper) instead of epochs/m (PGD-AT's cost)."
    ),
    yopo_m: int = typer.Option(5, help="YOPO outer (full) passes per batch."),
    yopo_n: int = typer.Option(3, help="YOPO inner first-layer steps per outer pass."),
    eval_examples: int = typer.Option(None, help="Test images for the per-epoch clean/PGD-10 eval (first N; default all)."),
    train_examples: int = typer.Option(None, help="Train on the first N training images only (quick trials)."),
    val_examples: int = typer.Option(TrainConfig.val_examples, help="Hold out N training images (a split fixed by --seed) and choose the best checkpoint by PGD-10 on them, not on the test images; 0: the paper's protocol (choose on test)."),
    seed: int = typer.Option(0, help="One seed for the initial weights, data order and attack noise."),
    grad_clip: float = typer.Option(None, help="Clip the gradient norm to this value."),
    data_dir: Path = typer.Option(None, help="Where the dataset files live (default $SSMBENCH_DATA)."),
    download: bool = typer.Option(True, help="Download missing dataset files (with checksum checks)."),
    device: str = typer.Option("auto", help="cpu, cuda, cuda:1, ... (auto: cuda when available; under torchrun cuda means cuda:LOCAL_RANK)."),
    precision: str = typer.Option("auto", help="Training passes: auto (bf16 autocast on CUDA, fp32 on CPU) | fp32 | bf16 (CUDA only). Attack gradients and evaluation are always fp32."),
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
    config = TrainConfig(
        method=at, epochs=epochs if epochs is not None else PAPER_EPOCHS.get(dataset, DEFAULT_EPOCHS),
        batch_size=batch_size, lr=lr, weight_decay=weight_decay, eps=parse_fraction(eps, "--eps"),
        alpha=parse_fraction(alpha, "--alpha"), steps=steps, trades_beta=trades_beta, mart_beta=mart_beta,
        freeat_m=freeat_m, freeat_full_epochs=freeat_full_epochs, yopo_m=yopo_m, yopo_n=yopo_n,
        eval_examples=eval_examples, train_examples=train_examples, val_examples=val_examples, seed=seed, grad_clip=grad_clip, precision=precision,
    )
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
            f"{arch} ({ads} AdS{', attention' if attention else ''}) on {dataset}, {at}, eps {config.eps:.4f}, "
            f"{config.effective_epochs} epochs, device {target}{processes} -> {out}"
        )
        with progress_bar(say, disable=not workers.is_main) as progress:
            observer = _RichObserver(progress) if workers.is_main else TrainObserver()
            result = train(model, train_data, test_data, config, out, augment=data.augment if info.augment else None,
                           observer=observer, resume=resume, compile_model=compile_model)
    say.print(_summary(result.best, result.last))
    chosen = f"{config.val_examples} held-out training images" if config.val_examples else "the test eval subset (the paper's protocol)"
    say.print(f"best = the epoch with the highest PGD-10 accuracy on {chosen}")
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
