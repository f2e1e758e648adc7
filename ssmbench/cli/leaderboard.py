"""`ssmbench leaderboard show|publish|export|compare|audit`: the results file as a table, markdown or
exports, the paired comparison of two of its results, and the rows too thin to publish.

Every command reads the file that `--leaderboard` names (the user's own by default) and says
which one it read, so a reader never mistakes their own runs for the published leaderboard.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer
from rich import box
from rich.table import Table

from model_zoo.errors import RunError, UsageError
from model_zoo.labels import method_label
from ssmbench import leaderboard
from ssmbench.cli._common import LEADERBOARD_HELP, console, leaderboard_path
from ssmbench.compare import SeedComparison, compare, compare_seeds, describe, examples_text, pick, pick_seeds
from ssmbench.leaderboard_render import FLAG_MARK, SUITES, TableKey, family, format_eps, percent1, row_interval, table_key
from ssmbench.protocol import below_publication_standard
from ssmbench.stats import Paired

leaderboard_app = typer.Typer(help="Show, publish and export the results leaderboard.", no_args_is_help=True)

LEADERBOARD_OPTION = typer.Option(None, "--leaderboard", help=LEADERBOARD_HELP)
PATH_ALIAS = typer.Option(None, "--path", hidden=True, help="The old name of --leaderboard.")
DATASET_OPTION = typer.Option(None, "--dataset", help="Only this dataset, e.g. digits.")
ARCH_OPTION = typer.Option(None, "--arch", help="Only this architecture, e.g. s4d.")
METHOD_OPTION = typer.Option(None, "--method", help="Only this training method, e.g. pgd.")

# Typer shows an Enum's values as the choices in --help and refuses others with exit code 2.
# (mypy cannot see the members of an Enum built from a tuple; Typer and the tests can.)
ExportFormat = Enum("ExportFormat", {name: name for name in leaderboard.EXPORT_FORMATS}, type=str)  # type: ignore[misc]


@leaderboard_app.command("show")
def show_command(
    dataset: str | None = DATASET_OPTION,
    arch: str | None = ARCH_OPTION,
    method: str | None = METHOD_OPTION,
    wide: bool = typer.Option(False, "--wide", help="Every field of every row (model path, versions, device...)."),
    results: Path | None = LEADERBOARD_OPTION,
    old_path: Path | None = PATH_ALIAS,
) -> None:
    """List every result in the results file, oldest first, with 95% Wilson intervals and whether
    the sanity checks passed, flagged or did not run: one table per dataset and eps, narrow enough
    for an 80-column terminal (--wide for every field). Every seed is its own row.

    Example: ssmbench leaderboard show --dataset digits --leaderboard leaderboards/results.parquet
    """
    path = _results(results, old_path)
    rows = leaderboard.query(path, dataset=dataset, arch=arch, method=method)
    if not rows:
        console.print(f"No results in {path} match these filters.", soft_wrap=True)
        return
    console.print(f"{path}: {len(rows)} results")
    render = _wide_table if wide else _compact_table
    tables: dict[TableKey, list[leaderboard.ResultRow]] = {}
    for row in rows:
        tables.setdefault(table_key(row), []).append(row)
    for key, group in tables.items():
        console.print(render(f"{key.dataset}, {key.threat_model} eps {format_eps(key.eps)}", group))
        if not wide:
            console.print(CHECKS_LEGEND)
        flagged = [row for row in group if row.flags]
        if flagged and not wide:
            for row in flagged:
                console.print(f"{FLAG_MARK} {family(row).label}, {_method(row)}, {row.checkpoint_kind or '-'}, "
                              f"{SUITES.get(row.suite, (row.suite,))[0]} ({row.run_id}): {', '.join(row.flags)}")
            console.print()


CHECK_CELLS = {leaderboard.CHECKED: "ok", leaderboard.FLAGGED: "flag", leaderboard.NOT_CHECKED: "-"}
CHECKS_LEGEND = ("CA/RA: % with 95% Wilson interval. chk: ok = sanity checks passed, flag = flagged (listed "
                 "below), - = not checked")


def _compact_table(title: str, rows: list[leaderboard.ResultRow]) -> Table:
    """The columns that tell results apart, at most 80 characters wide: the family label says
    architecture, AdS and attention; each accuracy has its interval on a second line; a flagged
    result gets a mark, its flags are listed below."""
    # SIMPLE_HEAD separates columns by a space already: no padding, or 9 columns overflow 80.
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, padding=0)
    table.add_column("model", min_width=14)  # the one column that wraps: 'dss + AdS (sigmoid) + attention'
    for column, width in (("method", 6), ("ckpt", 4), ("suite", 6), ("seed", 4), ("n", 4), ("CA %", 11), ("RA %", 12), ("chk", 4)):
        table.add_column(column, justify="right" if "%" in column or column in ("n", "seed") else "left", min_width=width, no_wrap=True)
    for row in rows:
        table.add_row(
            family(row).label, _method(row), row.checkpoint_kind or "-", SUITES.get(row.suite, (row.suite,))[0],
            str(row.train_seed), str(row.n_examples), _two_lines(row, clean=True),
            _two_lines(row, clean=False) .replace("\n", f"{FLAG_MARK if row.flags else ''}\n", 1),
            CHECK_CELLS[row.check_status],
        )
    return table


def _two_lines(row: leaderboard.ResultRow, clean: bool) -> str:
    """'86.1' over '(82.2-89.3)': the interval under its accuracy keeps the table narrow."""
    value, interval = row_interval(row, clean).split(" ", 1)
    return f"{value}\n{interval}"


def _wide_table(title: str, rows: list[leaderboard.ResultRow]) -> Table:
    table = Table(title=title, title_justify="left")
    for column in ("time", "run", "model", "arch", "ads", "attn", "method", "train eps", "seed", "selection", "ckpt",
                   "suite", "backend", "examples", "CA %", "robust %", "checks", "flags", "device", "seconds", "versions"):
        table.add_column(column, justify="right" if column in ("CA %", "robust %", "seconds", "seed") else "left")
    for row in rows:
        checks = (f"{', '.join(row.checks_run)} on {row.check_examples}" if row.checks_run else "not checked")
        examples = f"{row.n_examples}: {row.split} {row.examples}" + (f", labels {row.labels_sha256[:12]}" if row.labels_sha256 else "")
        table.add_row(
            row.time, row.run_id, row.model, row.arch, row.ads, "yes" if row.attention else "no", row.method,
            format_eps(row.train_eps), str(row.train_seed), row.selection, row.checkpoint_kind or "-", row.suite,
            f"{row.backend} {row.backend_version}", examples, row_interval(row, clean=True), row_interval(row),
            checks, ", ".join(row.flags) or "-", row.device, f"{row.wall_seconds:.0f}",
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
    html: Path | None = typer.Option(None, "--html", help="Also write the leaderboard as a static site into this folder: a sortable, filterable page per table, a page per model family (open DIR/index.html; no network needed)."),
    history_root: Path = typer.Option(Path("."), help="With --html: where the recorded checkpoint paths (runs/...) are found, for their training curves."),
) -> None:
    """Render the results file to the markdown leaderboard (the paper's best/last/Diff tables), and with --html to a static site.

    Example: ssmbench leaderboard publish --leaderboard leaderboards/results.parquet --out leaderboards/README.md --check

    Example: ssmbench leaderboard publish --leaderboard leaderboards/results.parquet --html site/
    """
    path = _results(results, old_path)
    out = out if out is not None else leaderboard.markdown_for(path)
    if check and html is not None:
        raise UsageError("--check compares the markdown only; publish the site without --check")
    if check:
        if not leaderboard.markdown_is_fresh(path, out):
            raise RunError(f"{out} is stale: it is not what {path} renders to; run `ssmbench leaderboard publish "
                           f"--leaderboard {path} --out {out}` and commit the result")
        console.print(f"{out} is up to date with {path}", soft_wrap=True)
        return
    leaderboard.publish(path, out)
    console.print(f"wrote {out} from {path}", soft_wrap=True)
    if html is not None:
        from ssmbench.site import build_site  # Jinja2 is imported only when a site is built

        written = build_site(leaderboard.read(path), html, history_root)
        console.print(f"wrote the site, {len(written)} files, into {html} (open {html / 'index.html'})", soft_wrap=True)


@leaderboard_app.command("audit")
def audit_command(
    results: Path | None = LEADERBOARD_OPTION,
    drop: bool = typer.Option(False, "--drop", help="Remove those rows from the file (atomically; git history keeps them) instead of failing."),
) -> None:
    """List the rows below the publication standard (AutoAttack on fewer than 200 examples, or
    than the whole test split where it is smaller) and exit 1 if there are any; CI runs it on
    every committed leaderboard. With --drop, rewrite the file without them, then re-publish its
    markdown.

    Example: ssmbench leaderboard audit --leaderboard leaderboards/results.parquet
    """
    path = _results(results, None)

    def reason(row: leaderboard.ResultRow) -> str | None:
        return below_publication_standard(row.suite, row.n_examples, row.dataset)

    thin = [row for row in leaderboard.read(path) if reason(row)]
    if not thin:
        console.print(f"{path}: every row meets the publication standard", soft_wrap=True)
        return
    for row in thin:
        console.print(f"{family(row).label}, {_method(row)}, {row.checkpoint_kind or '-'}, {row.dataset} "
                      f"({row.run_id}): {reason(row)}", soft_wrap=True)
    if not drop:
        raise RunError(f"{path}: {len(thin)} rows are below the publication standard (listed above); remove them with "
                       f"`ssmbench leaderboard audit --leaderboard {path} --drop` or measure them on more examples")
    removed = leaderboard.remove(path, lambda row: reason(row) is not None)
    console.print(f"removed {len(removed)} rows from {path}; now run `ssmbench leaderboard publish --leaderboard {path}`",
                  soft_wrap=True)


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


@leaderboard_app.command("compare")
def compare_command(
    a: str = typer.Argument(..., help="Model A: a zoo name, a checkpoint path, a run id, or a label as the tables print it."),
    b: str = typer.Argument(..., help="Model B, named the same ways."),
    suite: str = typer.Option("pgd10", "--attack", help="Which suite's results to compare, e.g. pgd10 or autoattack."),
    ckpt: str = typer.Option("best", "--ckpt", help="best or last, when a name matches both checkpoints."),
    n_examples: int = typer.Option(None, "--n-examples", help="Only results on this many examples (default: the newest)."),
    seeds: bool = typer.Option(False, "--seeds", help="A and B are labels with several training seeds: pair them seed by seed, then summarize over the seeds."),
    dataset: str = typer.Option(None, "--dataset", help="Only results on this data set, for a label that a results file holds for several (e.g. gunpoint)."),
    results: Path | None = LEADERBOARD_OPTION,
    old_path: Path | None = PATH_ALIAS,
) -> None:
    """Compare two results measured on the same examples with the same attack: the accuracy
    difference A - B with a paired 95% interval and the exact McNemar p-value on the per-example
    outcomes. Refuses results on different examples, attacks or eps, and rows without outcomes.
    With --seeds, one such test per training seed that both have, then the mean difference over
    the seeds with its Student-t 95% interval (training randomness) and in how many seeds the
    difference is significant.

    Example: ssmbench leaderboard compare s4-pgd-tanh-digits s5-pgd-none-digits --attack pgd10

    Example: ssmbench leaderboard compare "s4 (released) + AdS (tanh), PGD-AT" "s4 (released), PGD-AT" --seeds --attack autoattack

    Example: ssmbench leaderboard compare "s5, PGD-AT" "s5, ST" --seeds --ckpt last --dataset gunpoint --leaderboard leaderboards/timeseries.parquet
    """
    path = _results(results, old_path)
    rows = leaderboard.read(path)
    console.print(f"{path}:", soft_wrap=True)
    if seeds:
        _print_seed_comparison(a, b, compare_seeds(pick_seeds(rows, a, suite, ckpt, n_examples, dataset),
                                                   pick_seeds(rows, b, suite, ckpt, n_examples, dataset)))
        return
    result = compare(pick(rows, a, suite, ckpt, n_examples, dataset), pick(rows, b, suite, ckpt, n_examples, dataset))
    console.print(f"A: {a}: {describe(result.a)}")
    console.print(f"B: {b}: {describe(result.b)}")
    console.print(f"on {examples_text(result.a)}, {result.a.threat_model} eps {format_eps(result.a.eps)}")
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, padding=0)  # two-line cells: fits 80 columns
    for column in ("%", "A", "B", "A - B, 95% CI", "only A", "only B", "McNemar p"):
        table.add_column(column, justify="left" if column == "%" else "right", no_wrap=True)
    for name, stats, clean in (("robust", result.robust, False), ("clean", result.clean, True)):
        a_cell, b_cell = (row_interval(row, clean).replace(" ", "\n", 1) for row in (result.a, result.b))
        table.add_row(name, a_cell, b_cell, _difference(stats), str(stats.only_a), str(stats.only_b), f"{stats.p_value:.3g}")
    console.print(table)
    verdict = "A - B is significant at the 5% level" if result.robust.significant else \
        "no significant difference in robust accuracy (p >= 0.05): do not rank these two"
    console.print(verdict)


def _print_seed_comparison(a: str, b: str, result: SeedComparison) -> None:
    first = next(iter(result.by_seed.values()))
    console.print(f"A: {a}: {describe(first.a)}")
    console.print(f"B: {b}: {describe(first.b)}")
    console.print(f"each seed on {examples_text(first.a)}, {first.a.threat_model} eps {format_eps(first.a.eps)}")
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, padding=0)
    for column in ("seed", "A robust", "B robust", "A - B, 95% CI", "only A", "only B", "McNemar p"):
        table.add_column(column, justify="left" if column == "seed" else "right", no_wrap=True)
    for seed, item in result.by_seed.items():
        a_cell, b_cell = (row_interval(row).replace(" ", "\n", 1) for row in (item.a, item.b))
        stats = item.robust
        table.add_row(str(seed), a_cell, b_cell, _difference(stats), str(stats.only_a), str(stats.only_b), f"{stats.p_value:.3g}")
    console.print(table)
    n_seeds, (above, below) = len(result.by_seed), result.significant_seeds
    interval = result.interval()
    spread = "" if interval is None else f" (Student-t 95% over the seeds: {percent1(interval[0]):+} to {percent1(interval[1]):+})"
    console.print(f"mean A - B over {n_seeds} seed{'s' if n_seeds > 1 else ''}: {percent1(result.mean):+} points{spread}; "
                  f"significant (p < 0.05) with A above B in {above} of {n_seeds} seeds, with A below B in {below}")


def _difference(stats: Paired) -> str:
    return f"{percent1(stats.difference):+}\n({percent1(stats.low):+} to {percent1(stats.high):+})"


def register(app: typer.Typer) -> None:
    app.add_typer(leaderboard_app, name="leaderboard")
