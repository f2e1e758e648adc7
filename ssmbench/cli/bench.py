"""`ssmbench bench [NAME ...]`: the speed benchmarks, each against a named baseline in the same run."""

from __future__ import annotations

import dataclasses
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from model_zoo.devices import resolve_device
from model_zoo.errors import UsageError
from ssmbench.cli._common import console

if TYPE_CHECKING:
    from benchmarks import Report

DEFAULT_RESULTS = Path("benchmarks") / "results"


def _device(name: str) -> str:
    return str(resolve_device(name))


def bench_command(
    names: list[str] = typer.Argument(None, help="Benchmarks to run (default: all); see --list."),
    quick: bool = typer.Option(False, "--quick", help="Smaller batches (8) and fewer repeats: minutes, not an hour."),
    out: Path = typer.Option(None, help="JSON results file (default benchmarks/results/DATE.json); the markdown table is written beside it (.md)."),
    markdown: bool = typer.Option(False, "--markdown", help="Print the markdown table instead of the terminal table."),
    device: str = typer.Option("auto", help="auto (CUDA when present), cpu, cuda or cuda:N."),
    threads: int = typer.Option(None, help="torch threads in each benchmark process (default: torch's own choice)."),
    memory_cap_gb: float = typer.Option(
        12.0, help="Address-space cap of each benchmark process on CPU (0: none); a side that needs more is reported as out of memory."
    ),
    baseline_commit: str = typer.Option(
        None, help="Revision that the `commit` benchmark checks out into a temporary worktree and runs as its baseline (default: main before the speed work, benchmarks.runner.BASELINE_COMMIT)."
    ),
    list_only: bool = typer.Option(False, "--list", help="List the benchmarks and exit."),
) -> None:
    """Time our implementations against named baselines (sequential recurrences, mambapy,
    torchattacks, standard training) and report the ratio baseline / ours and peak memory.

    Example: ssmbench bench mixers mamba --quick --markdown
    """
    import benchmarks  # imported here: it registers every benchmark, which `ssmbench --help` does not need

    if list_only:
        for spec in benchmarks.BENCHMARKS.values():
            console.print(f"{spec.name:<12} {spec.description}", markup=False)
        return
    if threads is not None and threads < 1:
        raise UsageError(f"--threads must be >= 1, got {threads}")
    if memory_cap_gb < 0:
        raise UsageError(f"--memory-cap-gb must be >= 0, got {memory_cap_gb}")
    for name in names or []:
        benchmarks.get_benchmark(name)
    scale = "quick" if quick else "full"
    options = benchmarks.RunOptions(
        device=_device(device), threads=threads, memory_cap_mb=int(memory_cap_gb * 1024) if memory_cap_gb else None,
    )
    if baseline_commit:
        options = dataclasses.replace(options, baseline_commit=baseline_commit)
    with console.status("starting...") as status:

        def show(case: str, side: str) -> None:
            status.update(f"{case}: {side}")

        report = benchmarks.run_benchmarks(names or None, scale, options, on_task=show)
    suffix = "-quick" if quick else ""
    json_path, markdown_path = report.write(out or DEFAULT_RESULTS / f"{date.today().isoformat()}{suffix}.json")
    if markdown:
        console.print(report.markdown(), markup=False, soft_wrap=True)
    else:
        console.print(_table(report))
    console.print(f"wrote {json_path} and {markdown_path}", markup=False)


def _table(report: Report) -> Table:
    from benchmarks.runner import COLUMNS, machine_line, row_cells

    table = Table(title=machine_line(report.machine), title_justify="left", caption="speed-up = baseline / ours")
    for column in COLUMNS:
        table.add_column(column, justify="left" if column in ("benchmark", "case", "baseline", "notes") else "right")
    for row in report.rows:
        table.add_row(*row_cells(row))
    return table


def register(app: typer.Typer) -> None:
    app.command("bench")(bench_command)
