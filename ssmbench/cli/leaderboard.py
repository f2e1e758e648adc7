"""`ssmbench leaderboard show|publish|export`: the results file, as a table, markdown or exports."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer
from rich.table import Table

from model_zoo.errors import RunError
from ssmbench import leaderboard
from ssmbench.cli._common import console
from ssmbench.leaderboard_render import format_eps, percent

leaderboard_app = typer.Typer(help="Show, publish and export the results leaderboard.", no_args_is_help=True)

PATH_OPTION = typer.Option(leaderboard.DEFAULT_RESULTS, "--path", help="The results file (Parquet).")
DATASET_OPTION = typer.Option(None, "--dataset", help="Only this dataset, e.g. digits.")
ARCH_OPTION = typer.Option(None, "--arch", help="Only this architecture, e.g. s4d.")
METHOD_OPTION = typer.Option(None, "--method", help="Only this training method, e.g. pgd.")

# Typer shows an Enum's values as the choices in --help and refuses others with exit code 2.
ExportFormat = Enum("ExportFormat", {name: name for name in leaderboard.EXPORT_FORMATS}, type=str)


@leaderboard_app.command("show")
def show_command(
    dataset: str | None = DATASET_OPTION,
    arch: str | None = ARCH_OPTION,
    method: str | None = METHOD_OPTION,
    path: Path = PATH_OPTION,
) -> None:
    """List every result in the results file, oldest first, with its sanity flags.

    Example: ssmbench leaderboard show --dataset digits --method pgd
    """
    rows = leaderboard.query(path, dataset=dataset, arch=arch, method=method)
    if not rows:
        console.print(f"No results in {path} match these filters.")
        return
    table = Table(title=f"{path}: {len(rows)} results", title_justify="left")
    for column in ("time", "model", "dataset", "arch", "ads", "attn", "method", "train eps", "ckpt",
                   "suite", "eps", "n", "CA %", "robust %", "flags"):
        justify = "right" if column in ("n", "CA %", "robust %") else "left"
        table.add_column(column, justify=justify)
    for row in rows:
        table.add_row(
            row.time, row.model, row.dataset, row.arch, row.ads, "yes" if row.attention else "no",
            row.method, format_eps(row.train_eps), row.checkpoint_kind or "-", row.suite,
            f"{row.threat_model} {format_eps(row.eps)}", str(row.n_examples),
            str(percent(row.clean_acc)), str(percent(row.robust_acc)), ", ".join(row.flags) or "-",
        )
    console.print(table)


@leaderboard_app.command("publish")
def publish_command(
    path: Path = PATH_OPTION,
    out: Path = typer.Option(leaderboard.DEFAULT_MARKDOWN, "--out", help="The markdown file to write."),
    check: bool = typer.Option(
        False, "--check", help="Write nothing; exit 1 if the markdown file is not what would be written."
    ),
) -> None:
    """Render the results file to the markdown leaderboard (the paper's best/last/Diff tables).

    Example: ssmbench leaderboard publish --check
    """
    if check:
        if not leaderboard.markdown_is_fresh(path, out):
            raise RunError(f"{out} is stale: it is not what {path} renders to; run `ssmbench leaderboard publish` "
                           "and commit the result")
        console.print(f"{out} is up to date with {path}")
        return
    leaderboard.publish(path, out)
    console.print(f"wrote {out} from {path}")


@leaderboard_app.command("export")
def export_command(
    fmt: ExportFormat = typer.Option(..., "--format", help="csv: one file; robustbench: a folder of model-info JSON."),
    out: Path = typer.Option(..., "--out", help="The CSV file, or the folder for RobustBench files."),
    dataset: str | None = DATASET_OPTION,
    arch: str | None = ARCH_OPTION,
    method: str | None = METHOD_OPTION,
    path: Path = PATH_OPTION,
) -> None:
    """Export results as CSV, or as RobustBench model-info JSON files (models with AutoAttack results).

    Example: ssmbench leaderboard export --format robustbench --out robustbench_info
    """
    rows = leaderboard.query(path, dataset=dataset, arch=arch, method=method)
    written = leaderboard.export(rows, fmt.value, out)
    console.print(f"wrote {len(written)} file(s) from {len(rows)} results under {out}")


def register(app: typer.Typer) -> None:
    app.add_typer(leaderboard_app, name="leaderboard")
