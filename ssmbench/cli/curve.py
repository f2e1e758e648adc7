"""`ssmbench curve TARGET...`: robust accuracy against eps for several models on the same examples."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.progress import TaskID
from rich.table import Table

from model_zoo.devices import resolve_device
from model_zoo.errors import UsageError
from ssmbench import curves
from ssmbench.cli._common import check_at_least, check_seed, console, parse_fraction, progress_bar
from ssmbench.cli._settings import default
from ssmbench.cli._targets import first_test_examples, load_targets
from ssmbench.evaluate import EvalSettings
from ssmbench.stats import wilson

MAX_GRID = 257  # 9 bisection rounds; a finer grid than 1/255 steps up to 1 buys nothing on images


def parse_eps_grid(text: str) -> tuple[float, ...]:
    """'0,1/255,2/255' (a list) or '0:16/255:17' (START:STOP:COUNT, evenly spaced, both ends included)."""
    if ":" in text:
        parts = text.split(":")
        if len(parts) != 3:
            raise UsageError(f"--eps range must be START:STOP:COUNT like 0:16/255:17, got {text!r}")
        start, stop = parse_fraction(parts[0], "--eps start"), parse_fraction(parts[1], "--eps stop")
        try:
            count = int(parts[2])
        except ValueError:
            raise UsageError(f"--eps COUNT must be an integer, got {parts[2]!r}") from None
        if not 2 <= count <= MAX_GRID or stop <= start:
            raise UsageError(f"--eps range needs STOP > START and 2 <= COUNT <= {MAX_GRID}, got {text!r}")
        grid = tuple(start + (stop - start) * i / (count - 1) for i in range(count))
    else:
        grid = tuple(parse_fraction(part, "--eps") for part in text.split(",") if part.strip())
        if len(grid) > MAX_GRID:
            raise UsageError(f"--eps takes at most {MAX_GRID} values, got {len(grid)}")
    curves.check_grid(grid)
    return grid


def curve_command(
    targets: list[str] = typer.Argument(..., help="Checkpoints or zoo names, all of one dataset."),
    eps: str = typer.Option("0:16/255:17", help="Linf radii: a list 0,2/255,4/255 or a range START:STOP:COUNT."),
    n_examples: int = typer.Option(None, help="The first N test images (default: the whole test split)."),
    batch_size: int = typer.Option(default(EvalSettings, "batch_size"), help="Examples per batch; each batch is searched on its own."),
    seed: int = typer.Option(0, help="Seed of PGD's random starts."),
    data_dir: Path = typer.Option(None, help="Where the dataset files live (default $SSMBENCH_DATA or ~/.cache/ssmbench/data)."),
    out: Path = typer.Option(Path("runs/curve"), help="Output folder: curve.parquet, min_eps.parquet, curve.png."),
    device: str = typer.Option(None, help="cpu or cuda (default: cuda when available)."),
) -> None:
    """Robust accuracy against eps (PGD-10) with 95% Wilson intervals, from a bisection over the
    eps grid for the minimal eps of each example (log2 of the grid's size PGD-10 runs per example).

    Example: ssmbench curve s4-pgd-tanh-digits s4-pgd-none-digits --eps 0:16/255:17
    """
    check_at_least(1, batch_size=batch_size)
    check_seed(seed)
    grid = parse_eps_grid(eps)
    where = resolve_device(device)
    loaded = load_targets(targets, where)
    images, labels = first_test_examples(loaded[0][2].config.dataset, n_examples, data_dir, where)
    rounds = curves.rounds_needed(len(grid)) * -(-len(images) // batch_size)
    results = []
    with progress_bar(unit=None) as progress:
        for name, model, _ in loaded:
            task = progress.add_task(f"{name}: bisection", total=rounds)

            def advance(done: int, total: int, task: TaskID = task) -> None:
                progress.advance(task)

            results.append(curves.robustness_curve(name, model, images, labels, grid, seed, batch_size, on_round=advance))
            progress.remove_task(task)
    paths = curves.write_curves(results, out)
    _render(results)
    console.print(f"wrote {', '.join(map(str, paths))}")


def _render(results: list[curves.Curve]) -> None:
    """One row per eps, one column per model: robust accuracy with its 95% Wilson interval."""
    n = results[0].n_examples
    table = Table(title=f"PGD-10 robust accuracy %, n = {n} test images (95% Wilson interval)", title_justify="left")
    table.add_column("eps", justify="right", no_wrap=True)
    for curve in results:
        table.add_column(curve.name, justify="right")
    counts = [curve.robust_counts() for curve in results]
    for i, eps in enumerate(results[0].eps_grid):
        cells = []
        for k in (c[i] for c in counts):
            low, high = wilson(k, n)
            cells.append(f"{100 * k / n:.1f} ({100 * low:.1f}-{100 * high:.1f})")
        table.add_row(f"{eps * 255:.3g}/255", *cells)
    top = results[0].eps_grid[-1] * 255
    medians = [curve.median_min_eps() for curve in results]
    table.add_row("median min eps", *(f"> {top:.3g}/255" if m == float("inf") else f"{m * 255:.3g}/255" for m in medians), style="bold")
    console.print(table)


def register(app: typer.Typer) -> None:
    app.command("curve")(curve_command)
