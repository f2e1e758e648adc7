"""`ssmbench transfer A B C ...`: PGD-10 crafted on each source, every target measured on it."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from model_zoo.devices import resolve_device
from model_zoo.errors import UsageError
from ssmbench import transfer
from ssmbench.cli._common import check_at_least, check_seed, console, parse_fraction, progress_bar
from ssmbench.cli._settings import default, fraction_default
from ssmbench.cli._targets import first_test_examples, load_targets
from ssmbench.evaluate import EvalSettings
from ssmbench.stats import wilson


def transfer_command(
    targets: list[str] = typer.Argument(..., help="Two or more checkpoints or zoo names, all of one dataset; each is a source and a target."),
    eps: str = typer.Option(fraction_default(EvalSettings, "eps"), help="Linf radius on [0, 1] images, e.g. 8/255 or 0.03."),
    n_examples: int = typer.Option(None, help="The first N test images (default: the whole test split)."),
    batch_size: int = typer.Option(default(EvalSettings, "batch_size"), help="Examples per batch (the diagonal equals `eval --attack pgd10` with the same batch size and seed)."),
    seed: int = typer.Option(0, help="Seed of PGD's random starts."),
    data_dir: Path = typer.Option(None, help="Where the dataset files live (default $SSMBENCH_DATA or ~/.cache/ssmbench/data)."),
    out: Path = typer.Option(Path("runs/transfer"), help="Output folder: transfer.parquet and transfer.png."),
    device: str = typer.Option(None, help="cpu or cuda (default: cuda when available)."),
) -> None:
    """Source x target robust accuracy: PGD-10 examples crafted on each source model, measured on
    every target (same examples); the diagonal is each model's own white-box PGD-10 result.

    Example: ssmbench transfer s4-pgd-tanh-digits dss-pgd-tanh-digits mamba-pgd-none-digits --eps 8/255
    """
    if len(targets) < 2:
        raise UsageError("transfer needs at least two models (each is crafted on and measured)")
    check_at_least(1, batch_size=batch_size)
    check_seed(seed)
    radius = parse_fraction(eps, "--eps")
    where = resolve_device(device)
    loaded = load_targets(targets, where)
    images, labels = first_test_examples(loaded[0][2].config.dataset, n_examples, data_dir, where)
    models = [(name, model) for name, model, _ in loaded]
    with progress_bar(unit=None) as progress:
        task = progress.add_task("crafting and measuring", total=len(models) * -(-len(images) // batch_size))
        matrix = transfer.transfer_matrix(models, images, labels, radius, seed, batch_size,
                                          on_batch=lambda done, total: progress.update(task, completed=done))
    paths = transfer.write_matrix(matrix, out)
    _render(matrix)
    console.print(f"wrote {', '.join(map(str, paths))}")


def _render(matrix: transfer.TransferMatrix) -> None:
    n = matrix.n_examples
    table = Table(title=f"Target robust accuracy % (95% Wilson interval) on PGD-10 examples crafted on the source, "
                  f"eps {matrix.eps * 255:.3g}/255, n = {n} test images; diagonal = white box", title_justify="left")
    table.add_column("source \\ target", no_wrap=True)
    for name in matrix.names:
        table.add_column(name, justify="right")
    for s, source in enumerate(matrix.names):
        cells = []
        for t in range(len(matrix.names)):
            k = int(matrix.robust[s, t].sum())
            low, high = wilson(k, n)
            cell = f"{100 * k / n:.1f} ({100 * low:.1f}-{100 * high:.1f})"
            cells.append(f"[bold]{cell}[/bold]" if s == t else cell)
        table.add_row(source, *cells)
    clean = [int(matrix.clean[t].sum()) for t in range(len(matrix.names))]
    table.add_row("clean", *(f"{100 * k / n:.1f}" for k in clean), style="dim")
    console.print(table)


def register(app: typer.Typer) -> None:
    app.command("transfer")(transfer_command)
