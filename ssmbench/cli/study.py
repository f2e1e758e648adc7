"""`ssmbench study`: train and evaluate a grid of models, resumably, with progress bars.

Thin: it builds a StudyConfig (from --config or from flags), calls `ssmbench.study.run_study`
with a rich observer, then prints the paper-style table and writes it to <out>/README.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import typer
from rich.progress import Progress
from rich.table import Table

from model_zoo.devices import resolve_device
from model_zoo.errors import RunError, UsageError
from model_zoo.files import atomic_write_bytes
from model_zoo.training import EpochRecord
from ssmbench.cli._common import console, parse_fraction, progress_bar
from ssmbench.home import HOME_ENV
from ssmbench.study import (
    DONE,
    FAILED,
    PENDING,
    RUNNING,
    Cell,
    CellOutcome,
    CellStatus,
    Grid,
    Skipped,
    StudyConfig,
    StudyObserver,
    load_study,
    parse_shard,
    plan,
    render_study,
    run_study,
)
from ssmbench.study.commit import GitCommitter
from ssmbench.study.cost import study_cost
from ssmbench.study.ledger import ledger_path


class _RichObserver(StudyObserver):
    """Two bars: the cells of this runner, and the epoch (or evaluation) in progress."""

    def __init__(self, progress: Progress, leaderboard: Path, committer: GitCommitter | None = None, title: str = "") -> None:
        self.progress = progress
        self.leaderboard = leaderboard
        self.committer = committer
        self.title = title
        self.cells = progress.add_task("cells", total=None)
        self.work = progress.add_task("", total=None, visible=False)
        self.counted: set[Cell] = set()

    def on_study_start(self, cells: Sequence[CellStatus], skipped: Sequence[Skipped]) -> None:
        self.counted = {s.cell for s in cells if s.status in (PENDING, RUNNING)}
        finished = len(cells) - len(self.counted)
        # The bar counts only the cells left to run, so its ETA is not skewed by instant skips.
        self.progress.update(self.cells, total=len(self.counted), completed=0)
        self.progress.console.print(
            f"{len(cells)} cells ({finished} finished before, {len(self.counted)} to run"
            f"{f', {len(skipped)} combinations skipped' if skipped else ''})"
        )

    def on_cell_start(self, cell: Cell, index: int, total: int, resumed_epochs: int) -> None:
        self.progress.update(self.cells, description=f"cell {index}/{total} {cell.name}")
        resumed = f" (resuming after epoch {resumed_epochs})" if resumed_epochs else ""
        self.progress.console.print(f"[bold]{cell.name}[/bold]{resumed}")

    def on_epoch_start(self, epoch: int, epochs: int, samples: int) -> None:
        self.progress.reset(self.work, total=samples, description=f"  epoch {epoch}/{epochs}", visible=True)

    def on_batch(self, done: int, total: int, samples: int) -> None:
        self.progress.update(self.work, completed=done)

    def on_eval_start(self, epoch: int, examples: int) -> None:
        self.progress.update(self.work, description=f"  epoch {epoch} eval ({examples} test images, PGD-10)")

    def on_epoch(self, record: EpochRecord, is_best: bool) -> None:
        self.progress.console.print(
            f"  epoch {record.epoch:>3}  train {100 * record.train_clean_acc:5.1f}/{100 * record.train_adv_acc:5.1f}  "
            f"test {100 * record.test_clean_acc:5.1f}/{100 * record.test_adv_acc:5.1f}  "
            f"{record.samples_per_s:,.0f}/s{'  best' if is_best else ''}",
            markup=False,
        )

    def on_eval(self, cell: Cell, kind: str, suite: str, done: int, total: int, attack: str) -> None:
        description = f"  {kind} {suite}" + (f" ({attack})" if attack else "")
        task = self.progress.tasks[self.work]
        if task.total != total or not task.description.startswith(f"  {kind} {suite}"):
            self.progress.reset(self.work, total=total, description=description, visible=True)
        self.progress.update(self.work, completed=done, description=description)

    def on_cell_end(self, outcome: CellOutcome) -> None:
        self.progress.update(self.work, visible=False)
        if outcome.ran:
            self.progress.advance(self.cells)
        elif outcome.cell in self.counted:  # finished or taken by another runner meanwhile
            total = self.progress.tasks[self.cells].total
            if total is not None:  # on_study_start set it
                self.progress.update(self.cells, total=total - 1)
        if outcome.status == DONE:
            self.progress.console.print(f"  done in {outcome.seconds:.0f} s: {_summary(outcome)}; {len(outcome.rows)} rows in "
                                        f"{self.leaderboard}", markup=False, soft_wrap=True)
            self._commit(outcome)
        elif outcome.status == FAILED:
            self.progress.console.print(f"  [red]failed[/red] after {outcome.seconds:.0f} s: {outcome.message}")
        elif outcome.cell in self.counted:
            self.progress.console.print(f"{outcome.cell.name}: {outcome.status}", markup=False)


    def _commit(self, outcome: CellOutcome) -> None:
        """--commit: the results file and its markdown, committed alone; a failure is reported and the study goes on."""
        if self.committer is None:
            return
        message = f"Study rows: {self.title}, cell {outcome.cell.name} ({len(outcome.rows)} rows, {outcome.seconds:.0f} s)"
        try:
            commit = self.committer.commit(message)
        except RuntimeError as exc:
            self.progress.console.print(f"  [yellow]not committed[/yellow]: {exc}; the rows are in {self.leaderboard}")
            return
        if commit:
            self.progress.console.print(f"  committed {self.leaderboard} as {commit}", markup=False)


def _summary(outcome: CellOutcome) -> str:
    """'best CA 91.4 pgd10 60.3 autoattack 55.0 | last ...' from the cell's rows."""
    parts = []
    for kind in ("best", "last"):
        rows = [row for row in outcome.rows if row.checkpoint_kind == kind]
        if rows:
            numbers = " ".join(f"{row.suite} {100 * row.robust_acc:.1f}" for row in rows)
            parts.append(f"{kind} CA {100 * rows[0].clean_acc:.1f} {numbers}")
    return " | ".join(parts)


def _split(text: str | None) -> tuple[str, ...] | None:
    return None if text is None else tuple(part.strip() for part in text.split(",") if part.strip())


def _seeds(text: str | None) -> tuple[int, ...] | None:
    """'0,1,2' -> (0, 1, 2); a part that is not an integer is a usage error."""
    parts = _split(text)
    if parts is None:
        return None
    try:
        return tuple(int(part) for part in parts)
    except ValueError:
        raise UsageError(f"--seeds must be integers separated by commas, e.g. 0,1,2; got {text!r}") from None


def _config(config: Path | None, grid: dict[str, Any], settings: dict[str, Any]) -> StudyConfig:
    """The study file's settings, or the flags' grid, with every given flag overriding a setting."""
    given = {key: value for key, value in settings.items() if value is not None}
    if config is not None:
        flags = [f"--{name}" for name, value in grid.items() if value]
        if flags:
            raise UsageError(f"the grid comes from {config}; drop {', '.join(flags)} or drop --config")
        return load_study(config).with_settings(**given)
    if not grid["models"] or not grid["at"]:
        raise UsageError("give --config STUDY.toml, or the grid as --models and --at (with --ads, --attention)")
    cells = Grid(models=grid["models"], methods=grid["at"], ads=grid["ads"] or Grid.ads, attention=(grid["attention"],))
    dataset = given.get("dataset", StudyConfig.dataset)
    return StudyConfig(grids=(cells,), out=Path("runs") / f"study-{dataset}").with_settings(**given)


def _print_plan(statuses: list[CellStatus], config: StudyConfig) -> None:
    table = Table(title=f"Study {config.title}: {len(statuses)} cells in {config.out}", title_justify="left")
    for column in ("cell", "status", "epochs", "seconds", "note"):
        table.add_column(column)
    for item in statuses:
        note = item.message
        if item.status == FAILED:
            note += f" (delete {config.run_dir(item.cell) / 'done.json'} to retry)"
        seconds = "" if item.seconds is None else f"{item.seconds:.0f}"
        table.add_row(item.cell.name, item.status, str(item.epochs_done or ""), seconds, note)
    console.print(table)
    counts = {name: sum(s.status == name for s in statuses) for name in (DONE, FAILED, RUNNING, PENDING)}
    console.print(", ".join(f"{count} {name}" for name, count in counts.items()))
    console.print(f"Cost: {study_cost(statuses).describe()}.")


def study_command(
    config: Path = typer.Option(None, "--config", help="A study file (see studies/*.toml): \\[study] settings and \\[\\[grid]] tables."),
    dataset: str = typer.Option(None, help=f"Dataset (flag form; default {StudyConfig.dataset})."),
    models: str = typer.Option(None, help="Flag form: architectures, comma-separated, e.g. s4,dss,s5,mamba,mega."),
    at: str = typer.Option(None, "--at", help="Flag form: training methods, comma-separated, e.g. st,pgd,trades,freeat,yopo."),
    ads: str = typer.Option(None, help="Flag form: AdS options, comma-separated (none,relu,sigmoid,tanh); default none."),
    attention: bool = typer.Option(False, "--attention", help="Flag form: every cell gets a self-attention layer."),
    epochs: int = typer.Option(None, help="Training epochs (default: the study file's, else the dataset's paper epochs, as ssmbench train)."),
    batch_size: int = typer.Option(None, help="Training batch size."),
    lr: float = typer.Option(None, help="AdamW learning rate (cosine schedule)."),
    train_examples: int = typer.Option(None, help="Train on the first N training images."),
    eval_examples: int = typer.Option(None, help="PGD-10 on the first N test images, per epoch (selects best) and at the end."),
    aa_examples: int = typer.Option(None, help=f"AutoAttack on the first N test images (default {StudyConfig.aa_examples}, capped at the split)."),
    eps: str = typer.Option(None, help="Linf radius for training and evaluation, e.g. 8/255."),
    suites: str = typer.Option(None, help=f"Attack suites run on best and last, comma-separated (default {','.join(StudyConfig.suites)})."),
    backend: str = typer.Option(None, help="AutoAttack code: official | torchattacks."),
    checks: bool = typer.Option(None, "--checks/--no-checks", help="Gradient-masking sanity checks on every evaluation."),
    seeds: str = typer.Option(None, help="Seeds, comma-separated, e.g. 0,1,2: every cell once per seed (weights, data order, attacks); default 0."),
    out: Path = typer.Option(None, help="Run root: one directory per cell (flag form default runs/study-DATASET)."),
    leaderboard: Path = typer.Option(None, "--leaderboard", help=f"Results file the rows are appended to (default: the study file's, else your own, ${HOME_ENV}/results.parquet)."),
    shard: str = typer.Option(None, help="i/k: run only cells i, i+k, ... of the grid (1-based), e.g. 1/2 and 2/2 in two shells."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List the cells and which are done, failed, running or pending; run nothing."),
    commit: bool = typer.Option(False, "--commit", help="git-commit the results file, its re-rendered markdown and the study's cost ledger (those alone) after every finished cell, so that a long study's rows and timings survive the machine."),
    device: str = typer.Option(None, help="cpu or cuda (default: cuda when available)."),
    data_dir: Path = typer.Option(None, help="Where the dataset files live (default $SSMBENCH_DATA)."),
) -> None:
    """Train and evaluate a grid of models (architecture x method x AdS x attention), one run
    directory per cell; rerunning the command resumes: finished cells are skipped, an interrupted
    one continues from its last epoch. Several processes can share one study (--shard, or just
    start it twice: a cell another process holds is skipped). Ends with the paper-style table,
    also written to OUT/README.md.

    Example: ssmbench study --config studies/digits.toml --shard 1/2

    Example: ssmbench study --config studies/digits-full.toml --commit

    Example: ssmbench study --dataset digits --models s4,dss --at st,pgd --ads none,tanh --epochs 5 --aa-examples 64
    """
    device = None if device is None else str(resolve_device(device))
    grid = {"models": _split(models), "at": _split(at), "ads": _split(ads), "attention": attention}
    settings = {
        "dataset": dataset, "epochs": epochs, "batch_size": batch_size, "lr": lr, "train_examples": train_examples,
        "eval_examples": eval_examples, "aa_examples": aa_examples, "suites": _split(suites), "backend": backend,
        "checks": checks, "seeds": _seeds(seeds), "out": out, "leaderboard": leaderboard,
        "eps": None if eps is None else parse_fraction(eps, "--eps"),
    }
    study = _config(config, grid, settings)
    selection = parse_shard(shard) if shard is not None else None
    if dry_run:
        _print_plan(plan(study, selection), study)
        return
    committer = GitCommitter.for_file(study.leaderboard, (ledger_path(study.leaderboard),)) if commit else None
    with progress_bar() as progress:
        observer = _RichObserver(progress, study.leaderboard, committer, study.title)
        report = run_study(study, observer, shard=selection, device=device, data_dir=data_dir)
    text = render_study(study)
    # Raw markdown, not rich's rendering: the table has 12 number columns, which rich squeezes
    # into an 80-column terminal, while the text is readable as is and can be pasted anywhere.
    console.print(text, markup=False, soft_wrap=True)
    readme = study.out / "README.md"
    atomic_write_bytes(readme, text.encode())
    console.print(f"wrote {readme}")
    if report.failed:
        names = ", ".join(outcome.cell.name for outcome in report.failed)
        raise RunError(f"{len(report.failed)} cell(s) failed: {names}; {readme} lists why")


def register(app: typer.Typer) -> None:
    app.command("study")(study_command)
