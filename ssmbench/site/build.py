"""The site's pages: view models from result rows, rendered with the Jinja2 templates beside this file."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from model_zoo.errors import UsageError
from model_zoo.files import atomic_write_bytes
from model_zoo.training.history import read_history
from ssmbench import stats
from ssmbench.leaderboard import ResultRow
from ssmbench.leaderboard_render import (
    KINDS,
    MISSING,
    SAME_MARK,
    SUITES,
    Family,
    Line,
    TableKey,
    format_eps,
    leaderboard_lines,
    percent1,
    row_interval,
    same_as_above,
)
from ssmbench.site import curves

ASSETS = ("site.css", "site.js")
METRICS = ("CA", *SUITES)
METRIC_NAMES = {"CA": "CA", **{suite: short for suite, (short, _) in SUITES.items()}}


@dataclass(frozen=True)
class Cell:
    """What a table cell shows and what it sorts by ('' sorts after every number)."""

    text: str
    sort: str
    numeric: bool = False


@dataclass(frozen=True)
class Column:
    label: str
    numeric: bool


@dataclass(frozen=True)
class TableRow:
    arch: str
    href: str
    cells: tuple[Cell, ...]


@dataclass(frozen=True)
class Board:
    """One page: a dataset x threat model x eps table."""

    key: TableKey
    title: str
    href: str
    columns: tuple[Column, ...]
    rows: tuple[TableRow, ...]
    archs: tuple[str, ...]
    caption: str


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def family_href(family: Family) -> str:
    attention = "attn" if family.attention else "noattn"
    return f"family-{slug(f'{family.arch} ads {family.ads} {attention} {family.method} train {format_eps(family.train_eps)}')}.html"


def board_href(key: TableKey) -> str:
    return f"table-{slug(f'{key.dataset} {key.threat_model} eps {format_eps(key.eps)}')}.html"


def _board(key: TableKey, lines: list[Line]) -> Board:
    columns = [Column(name, False) for name in ("Model", "Architecture", "AdS", "Attention", "Method")]
    columns += [Column("Train ε", True), Column("Seeds", True), Column(SAME_MARK, False)]
    columns += [Column(f"{group} {METRIC_NAMES[m]}", True) for group in ("Best", "Last") for m in METRICS]
    columns += [Column(f"Diff {METRIC_NAMES[m]}", True) for m in METRICS] + [Column("Checks", False)]
    rows = []
    for index, line in enumerate(lines):
        f = line.family
        same = index > 0 and same_as_above(line, lines[index - 1])
        cells = [Cell(f.label, f.label), Cell(f.arch, f.arch), Cell(f.ads, f.ads), Cell("yes" if f.attention else "no", str(f.attention)),
                 Cell(f.method_label, f.method_label), Cell(format_eps(f.train_eps), repr(f.train_eps), True),
                 Cell(str(line.seeds), str(line.seeds), True), Cell(SAME_MARK if same else "", "1" if same else "")]
        for kind in KINDS:
            for metric in METRICS:
                value = line.value(kind, metric)
                cells.append(Cell(MISSING, "", True) if value is None else Cell(value.text(), f"{value.mean:.6f}", True))
        for metric in METRICS:
            best, last = line.value("best", metric), line.value("last", metric)
            if best is None or last is None:
                cells.append(Cell(MISSING, "", True))
            else:
                diff = percent1(best.mean) - percent1(last.mean)  # as the markdown: the printed numbers add up
                cells.append(Cell(f"{diff:+.1f}", str(diff), True))
        cells.append(Cell(line.checks(), line.checks()))
        rows.append(TableRow(f.arch, family_href(f), tuple(cells)))
    title = f"{key.dataset}, {key.threat_model}, ε = {format_eps(key.eps)}"
    counts = sorted({(suite, row.n_examples) for line in lines for (_, suite), rs in line.rows.items() for row in rs})
    caption = "; ".join(f"{SUITES[suite][1]} on {n} test images" for suite, n in counts)
    return Board(key, title, board_href(key), tuple(columns), tuple(rows), tuple(sorted({line.family.arch for line in lines})), caption)


@dataclass(frozen=True)
class Gap:
    """best - last on one table's suite for one seed: the robust-overfitting gap."""

    table: str
    suite: str
    seed: int
    n: str  # test images behind best (and last, when they match)
    best: str
    last: str
    difference: str
    interval: str
    p_value: str


@dataclass(frozen=True)
class Checkpoint:
    """One evaluated checkpoint as the rows (and, if found, its file) describe it."""

    fields: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class FamilyPage:
    family: Family
    href: str
    title: str
    boards: tuple[tuple[str, str], ...]  # (title, href) of the tables it is in
    gaps: tuple[Gap, ...]
    plots: tuple[curves.Plot, ...]
    checkpoints: tuple[Checkpoint, ...]
    missing_history: tuple[str, ...]


def _gaps(key: TableKey, line: Line) -> list[Gap]:
    found = []
    for suite in SUITES:
        best_rows = {row.train_seed: row for row in line.rows.get(("best", suite), ())}
        last_rows = {row.train_seed: row for row in line.rows.get(("last", suite), ())}
        for seed in sorted(set(best_rows) & set(last_rows)):
            best, last = best_rows[seed], last_rows[seed]
            pb, pl = best.per_example, last.per_example
            if pb is not None and pl is not None and best.example_set == last.example_set:
                test = stats.paired(pb.robust, pl.robust)
                interval = f"{100 * test.low:+.1f} to {100 * test.high:+.1f}"
                p_value = f"{test.p_value:.2g}"
            else:
                interval, p_value = "not paired (no per-example outcomes on the same examples)", MISSING
            n = str(best.n_examples) if best.n_examples == last.n_examples else f"{best.n_examples} / {last.n_examples}"
            found.append(Gap(f"{key.dataset}, ε = {format_eps(key.eps)}", SUITES[suite][1], seed, n, row_interval(best),
                             row_interval(last), f"{100 * (best.robust_acc - last.robust_acc):+.1f}", interval, p_value))
    return found


def _checkpoint(row: ResultRow) -> Checkpoint:
    fields = [
        ("checkpoint", row.checkpoint_kind or "other"), ("model", row.model), ("sha256", row.checkpoint_sha256),
        ("training seed", str(row.train_seed)), ("best selected on", row.selection), ("suite", row.suite),
        ("examples", f"{row.examples or row.n_examples} of {row.split}"), ("robust", row_interval(row)),
        ("clean", row_interval(row, clean=True)), ("backend", f"{row.backend} {row.backend_version}"),
        ("checks", ", ".join(row.checks_run) + f" on {row.check_examples} examples" if row.checks_run else "not checked"),
        ("flags", ", ".join(row.flags) or "none"), ("versions", f"ssmbench {row.ssmbench_version}, torch {row.torch_version}"),
        ("device", row.device), ("evaluated", row.time),
    ]
    return Checkpoint(tuple(fields))


def _histories(rows: Sequence[ResultRow], root: Path | None) -> tuple[list[curves.Plot], list[str]]:
    """One plot per training run (the folder of its checkpoints) whose history.parquet is found."""
    plots, missing = [], []
    runs = sorted({(row.train_seed, str(Path(row.model).parent)) for row in rows if row.model})
    for seed, run in runs:
        path = (root or Path(".")) / run / "history.parquet"
        if root is not None and path.is_file():
            try:
                records = read_history(path)
            except Exception as exc:  # pyarrow raises several kinds; a bad history costs its plot, not the site
                missing.append(f"{run} (unreadable history.parquet: {type(exc).__name__})")
                continue
            if records:
                plots.append(curves.plot(f"{run}, seed {seed}", records))
                continue
        missing.append(run)
    return plots, missing


def _family_pages(tables: dict[TableKey, list[Line]], root: Path | None) -> list[FamilyPage]:
    by_family: dict[Family, list[tuple[TableKey, Line]]] = {}
    for key, lines in tables.items():
        for line in lines:
            by_family.setdefault(line.family, []).append((key, line))
    pages = []
    for family in sorted(by_family):
        entries = by_family[family]
        rows = sorted({id(r): r for _, line in entries for r in line.all_rows}.values(),
                      key=lambda r: (r.dataset, r.train_seed, r.checkpoint_kind, r.suite, r.run_id))
        plots, missing = _histories(rows, root)
        title = f"{family.label}, {family.method_label} (train ε {format_eps(family.train_eps)})"
        pages.append(FamilyPage(
            family, family_href(family), title,
            tuple((f"{k.dataset}, {k.threat_model}, ε = {format_eps(k.eps)}", board_href(k)) for k, _ in entries),
            tuple(gap for key, line in entries for gap in _gaps(key, line)),
            tuple(plots), tuple(_checkpoint(r) for r in rows), tuple(missing)))
    return pages


def _environment() -> Environment:
    return Environment(loader=PackageLoader("ssmbench.site", "templates"), autoescape=select_autoescape(["html"]),
                       undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)


def build_site(rows: Sequence[ResultRow], out: Path, history_root: Path | None = None) -> list[Path]:
    """Write the site into `out` (created if needed); returns the files written, index.html first.

    `history_root` is where the rows' checkpoint paths (as recorded, e.g. runs/x/best.safetensors)
    are looked up for their history.parquet; None draws no curves. Every file is written
    atomically; files of an earlier build that this one does not write are left alone.
    """
    if out.exists() and not out.is_dir():
        raise UsageError(f"--html {out}: exists and is not a folder")
    tables = leaderboard_lines(rows)
    boards = [_board(key, lines) for key, lines in tables.items()]
    families = _family_pages(tables, history_root)
    env = _environment()
    pages: dict[str, str] = {"index.html": env.get_template("index.html").render(boards=boards, families=families, n_rows=len(rows))}
    for board in boards:
        pages[board.href] = env.get_template("table.html").render(board=board, boards=boards)
    for page in families:
        pages[page.href] = env.get_template("family.html").render(page=page, boards=boards)
    written = []
    for name, text in pages.items():
        atomic_write_bytes(out / name, text.encode())
        written.append(out / name)
    assets = resources.files("ssmbench.site") / "assets"
    for name in ASSETS:
        atomic_write_bytes(out / "assets" / name, (assets / name).read_bytes())
        written.append(out / "assets" / name)
    return written
