"""`ssmbench leaderboard show|publish|export`: the results file, as a table, markdown or exports.

Every command reads the file that `--leaderboard` names (the user's own by default) and says
which one it read, so a reader never mistakes their own runs for the published leaderboard.
"""

from __future__ import annotations

from datetime import timezone
from enum import Enum
from pathlib import Path

import typer
from rich import box
from rich.table import Table

from model_zoo.errors import RunError, UsageError
from model_zoo.labels import method_label
from ssmbench import leaderboard
from ssmbench.cli._common import LEADERBOARD_HELP, console, leaderboard_path
from ssmbench.leaderboard_render import FLAG_MARK, SUITES, TableKey, family, format_eps, percent, table_key

leaderboard_app = typer.Typer(help="Show, publish and export the results leaderboard.", no_args_is_help=True)

LEADERBOARD_OPTION = typer.Option(None, "--leaderboard", help=LEADERBOARD_HELP)
PATH_ALIAS = typer.Option(None, "--path", hidden=True, help="The old name of --leaderboard.")
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
    wide: bool = typer.Option(False, "--wide", help="Every field of every row (model path, versions, device...)."),
    results: Path | None = LEADERBOARD_OPTION,
    old_path: Path | None = PATH_ALIAS,
) -> None:
    """List every result in the results file, oldest first, with its sanity flags: one table per
    dataset and eps, narrow enough for an 80-column terminal (--wide for every field).

    Example: ssmbench leaderboard show --dataset digits --leaderboard leaderboards/results.parquet
    """
    path = _results(results, old_path)
    rows = leaderboard.query(path, dataset=dataset, arch=arch, method=method)
    if not rows:
        console.print(f"No results in {path} match these filters.", soft_wrap=True)
        return
    console.print(f"{path}: {len(rows)} results", soft_wrap=True)
    render = _wide_table if wide else _compact_table
    tables: dict[TableKey, list[leaderboard.ResultRow]] = {}
    for row in rows:
        tables.setdefault(table_key(row), []).append(row)
    for key, group in tables.items():
        console.print(render(f"{key.dataset}, {key.threat_model} eps {format_eps(key.eps)}", group))
        flagged = [row for row in group if row.flags]
        if flagged and not wide:
            for row in flagged:
                console.print(f"{FLAG_MARK} {family(row).label}, {_method(row)}, {row.checkpoint_kind or '-'}, "
                              f"{SUITES.get(row.suite, (row.suite,))[0]} ({row.run_id}): {', '.join(row.flags)}")
            console.print()


def _compact_table(title: str, rows: list[leaderboard.ResultRow]) -> Table:
    """The columns that tell results apart, about 78 characters wide: the family label says
    architecture, AdS and attention; a flagged result gets a mark, its flags are listed below."""
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1, 0, 0))
    table.add_column("model", min_width=16)  # the one column that wraps: 'dss + AdS (sigmoid) + attention'
    for column, width in (("method", 6), ("ckpt", 4), ("suite", 6), ("n", 4), ("CA %", 5), ("RA %", 6), ("time (UTC)", 11)):
        table.add_column(column, justify="right" if "%" in column or column == "n" else "left", min_width=width, no_wrap=True)
    for row in rows:
        table.add_row(
            family(row).label, _method(row), row.checkpoint_kind or "-", SUITES.get(row.suite, (row.suite,))[0],
            str(row.n_examples), str(percent(row.clean_acc)), f"{percent(row.robust_acc)}{FLAG_MARK if row.flags else ''}",
            row.timestamp.astimezone(timezone.utc).strftime("%m-%d %H:%M"),
        )
    return table


def _wide_table(title: str, rows: list[leaderboard.ResultRow]) -> Table:
    table = Table(title=title, title_justify="left")
    for column in ("time", "run", "model", "arch", "ads", "attn", "method", "train eps", "ckpt", "suite",
                   "backend", "n", "CA %", "robust %", "flags", "device", "seconds", "versions"):
        table.add_column(column, justify="right" if column in ("n", "CA %", "robust %", "seconds") else "left")
    for row in rows:
        table.add_row(
            row.time, row.run_id, row.model, row.arch, row.ads, "yes" if row.attention else "no", row.method,
            format_eps(row.train_eps), row.checkpoint_kind or "-", row.suite, f"{row.backend} {row.backend_version}",
            str(row.n_examples), str(percent(row.clean_acc)), str(percent(row.robust_acc)),
            ", ".join(row.flags) or "-", row.device, f"{row.wall_seconds:.0f}",
            f"ssmbench {row.ssmbench_version}, torch {row.torch_version}",
        )
    return table


def _method(row: leaderboard.ResultRow) -> str:
    """'PGD-AT', with the training eps when it is not the evaluation eps (e.g. 'PGD-AT 4/255')."""
    label = method_label(row.method)
    if row.train_eps and abs(row.train_eps - row.eps) > 1e-6:
        label += f" {format_eps(row.train_eps)}"
    return label


@leaderboard_app.command("publish")
def publish_command(
    results: Path | None = LEADERBOARD_OPTION,
    out: Path | None = typer.Option(None, "--out", help="The markdown file to write (default beside the results file: results.parquet -> README.md, NAME.parquet -> NAME.md)."),
    check: bool = typer.Option(
        False, "--check", help="Write nothing; exit 1 if the markdown file is not what would be written."
    ),
    old_path: Path | None = PATH_ALIAS,
) -> None:
    """Render the results file to the markdown leaderboard (the paper's best/last/Diff tables).

    Example: ssmbench leaderboard publish --leaderboard leaderboards/results.parquet --out leaderboards/README.md --check
    """
    path = _results(results, old_path)
    out = out if out is not None else leaderboard.markdown_for(path)
    if check:
        if not leaderboard.markdown_is_fresh(path, out):
            raise RunError(f"{out} is stale: it is not what {path} renders to; run `ssmbench leaderboard publish "
                           f"--leaderboard {path} --out {out}` and commit the result")
        console.print(f"{out} is up to date with {path}", soft_wrap=True)
        return
    leaderboard.publish(path, out)
    console.print(f"wrote {out} from {path}", soft_wrap=True)


@leaderboard_app.command("export")
def export_command(
    fmt: ExportFormat = typer.Option(..., "--format", help="csv: one file; robustbench: a folder of model-info JSON."),
    out: Path = typer.Option(..., "--out", help="The CSV file, or the folder for RobustBench files."),
    dataset: str | None = DATASET_OPTION,
    arch: str | None = ARCH_OPTION,
    method: str | None = METHOD_OPTION,
    results: Path | None = LEADERBOARD_OPTION,
    old_path: Path | None = PATH_ALIAS,
) -> None:
    """Export results as CSV, or as RobustBench model-info JSON files (models with AutoAttack results).

    Example: ssmbench leaderboard export --format robustbench --out robustbench_info --leaderboard leaderboards/results.parquet
    """
    path = _results(results, old_path)
    rows = leaderboard.query(path, dataset=dataset, arch=arch, method=method)
    written = leaderboard.export(rows, fmt.value, out)
    console.print(f"wrote {len(written)} file(s) from {len(rows)} results in {path} under {out}", soft_wrap=True)


def _results(given: Path | None, old_path: Path | None) -> Path:
    """The file to read: --leaderboard (or its old name --path), else the user's own.

    A missing default file is a newcomer who has recorded nothing yet: say where results will go
    and where the published ones are, instead of only 'no such file'.
    """
    if given is not None and old_path is not None and given != old_path:
        raise UsageError(f"--path is the old name of --leaderboard; give one of them, not {old_path} and {given}")
    path = leaderboard_path(given if given is not None else old_path)
    if given is None and old_path is None and not path.is_file():
        raise UsageError(f"{path}: no results of yours yet (`ssmbench eval` records them here); the published "
                         "leaderboard is --leaderboard leaderboards/results.parquet in a checkout")
    return path


def register(app: typer.Typer) -> None:
    app.add_typer(leaderboard_app, name="leaderboard")
