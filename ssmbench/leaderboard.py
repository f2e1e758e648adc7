"""The results table (DESIGN.md contract 4): one Parquet file, append-only, versioned.

Every evaluation appends `ResultRow`s to a results file: the user's own (ssmbench.home) unless a
file is named, e.g. the published `leaderboards/results.parquet`. The file is the record that the
markdown, `ssmbench leaderboard show` and the exports are derived from, so:

- appends are atomic (`model_zoo.files.atomic_writer`: a temp file in the same folder, fsynced,
  then renamed over the old one), so a crash leaves either the old file or the new one;
- appends are safe under concurrent writers: the read-modify-write runs under an exclusive
  `flock` on a sidecar lock file (`model_zoo.files.file_lock`), so two evaluations finishing
  together both land;
- the schema is versioned in the Parquet metadata, and each older version has a migration, so a
  file written by an older ssmbench still reads; a file that is not ours is refused, never
  overwritten;
- the rows are sealed: every write stores a sha256 over a canonical serialization of the rows in
  the file's key-value metadata and writes Parquet page checksums, and every read verifies both, so
  a flipped byte is refused with the path and the reason instead of becoming a silently different
  result that the next append writes back as fact (files written before the seal still read);
- a symlinked leaderboard is locked and replaced at the file it points to, keeping its mode, so a
  shared file stays shared; rows of an existing file are validated before anything is appended.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import math
import os
import re
import tempfile
from base64 import b64encode
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from model_zoo import files
from model_zoo.ads import ADS_CHOICES
from model_zoo.errors import RunError, UsageError
from ssmbench.leaderboard_render import render_markdown, robustbench_entries
from ssmbench.outcomes import PerExample, first_n

__all__ = [
    "EXPORT_FORMATS",
    "SCHEMA",
    "SCHEMA_VERSION",
    "LeaderboardError",
    "ResultRow",
    "append",
    "append_or_keep",
    "export",
    "markdown_for",
    "markdown_is_fresh",
    "publish",
    "query",
    "read",
    "render_markdown",
    "utc_now",
]

SCHEMA_VERSION = 2
_VERSION_KEY = b"ssmbench.schema_version"
_ROWS_SHA256_KEY = b"ssmbench.rows_sha256"
CHECKPOINT_KINDS = ("best", "last", "")
# How "best" was chosen: on held-out training images or on the test set, by PGD-10 accuracy or
# (-loss) by PGD-10 cross-entropy (TrainConfig.selection).
SELECTIONS = ("val", "test", "val-loss", "test-loss")
CHECKED, FLAGGED, NOT_CHECKED = "passed", "flagged", "not checked"


class LeaderboardError(UsageError):
    """A results file or row that cannot be used as it is; the message names the file."""


@dataclass(frozen=True)
class ResultRow:
    """One model x checkpoint x attack suite evaluation. Accuracies are fractions in [0, 1]."""

    run_id: str
    time: str  # ISO-8601 with a UTC offset; decides which of two rows for one cell is newer
    model: str  # zoo name or checkpoint path, as the user gave it
    dataset: str
    arch: str
    ads: str
    attention: bool
    method: str
    train_eps: float
    checkpoint_kind: str  # "best", "last", or "" for any other checkpoint
    checkpoint_sha256: str
    threat_model: str
    eps: float
    suite: str
    backend: str
    backend_version: str
    n_examples: int
    clean_acc: float
    robust_acc: float
    per_attack: dict[str, float]  # attack name -> robust accuracy after that attack
    flags: tuple[str, ...]  # sanity checks that failed (e.g. signs of gradient masking)
    seed: int
    device: str
    wall_seconds: float
    ssmbench_version: str
    torch_version: str
    # Schema 2. Defaults describe a row recorded before them (see _from_v1).
    train_seed: int = 0  # the checkpoint's training seed; `seed` is the attacks' seed
    selection: str = "test"  # how the best checkpoint was chosen: "val" (held out) or "test"
    split: str = "test"  # the examples: this split of `dataset` ...
    examples: str = ""  # ... "first N" of it ("" = not recorded)
    labels_sha256: str = ""  # sha256 of those examples' labels (int64), "" = not recorded
    outcomes: bytes = b""  # PerExample.pack(): clean, then robust after each of outcome_attacks
    outcome_attacks: tuple[str, ...] = ()  # the attacks in the order they ran
    checks_run: tuple[str, ...] = ()  # sanity checks that ran (none: "not checked")
    check_examples: int = 0  # on how many of the examples they ran

    def __post_init__(self) -> None:
        # Normalize containers so rows built from lists compare equal to rows read back.
        object.__setattr__(self, "per_attack", {str(k): float(v) for k, v in self.per_attack.items()})
        for name in ("flags", "outcome_attacks", "checks_run"):
            object.__setattr__(self, name, tuple(str(f) for f in getattr(self, name)))
        object.__setattr__(self, "outcomes", bytes(self.outcomes))
        problem = _row_problem(self)
        if problem:
            raise LeaderboardError(f"invalid result row {self.run_id!r}: {problem}")

    @property
    def timestamp(self) -> datetime:
        """`time` as an aware datetime, for ordering rows written in different time zones."""
        return datetime.fromisoformat(self.time)

    @property
    def per_example(self) -> PerExample | None:
        """The per-example outcomes, or None for a row recorded without them."""
        if not self.outcomes:
            return None
        return PerExample.unpack(self.outcomes, self.outcome_attacks, self.n_examples)

    @property
    def check_status(self) -> str:
        """FLAGGED when any flag was raised, CHECKED when the checks ran and passed, else NOT_CHECKED."""
        if self.flags:
            return FLAGGED
        return CHECKED if self.checks_run else NOT_CHECKED

    @property
    def example_set(self) -> tuple[str, str, str, str]:
        """What identifies the examples; two rows can be paired only when theirs are equal."""
        return (self.dataset, self.split, self.examples, self.labels_sha256)


def _outcomes_problem(row: ResultRow) -> str | None:
    """Per-example outcomes that do not describe this row's accuracies are a writer bug."""
    if not row.outcomes:
        return None
    if set(row.outcome_attacks) != set(row.per_attack):
        return f"outcome_attacks {list(row.outcome_attacks)} are not the attacks of per_attack {sorted(row.per_attack)}"
    try:
        outcomes = PerExample.unpack(row.outcomes, row.outcome_attacks, row.n_examples)
    except ValueError as exc:
        return str(exc)
    tolerance = 0.5 / row.n_examples
    recorded = {"clean_acc": row.clean_acc, "robust_acc": row.robust_acc, **row.per_attack}
    derived = {"clean_acc": outcomes.clean.mean(), "robust_acc": outcomes.robust.mean(),
               **{name: flags.mean() for name, flags in outcomes.robust_after.items()}}
    wrong = sorted(name for name, value in recorded.items() if abs(value - float(derived[name])) > tolerance)
    return f"per-example outcomes disagree with {', '.join(wrong)}" if wrong else None


def _row_problem(row: ResultRow) -> str | None:
    """What is wrong with a row, or None; catches writer bugs before they reach the record."""
    for name in ("clean_acc", "robust_acc"):
        value = getattr(row, name)
        if not 0.0 <= value <= 1.0:
            return f"{name} must be a fraction in [0, 1], got {value}"
    bad = {k: v for k, v in row.per_attack.items() if not 0.0 <= v <= 1.0}
    if bad:
        return f"per_attack accuracies must be fractions in [0, 1], got {bad}"
    if row.ads not in ADS_CHOICES:
        return f"ads must be one of {', '.join(ADS_CHOICES)}, got {row.ads!r}"
    if row.checkpoint_kind not in CHECKPOINT_KINDS:
        return f"checkpoint_kind must be 'best', 'last' or '', got {row.checkpoint_kind!r}"
    if row.n_examples <= 0:
        return f"n_examples must be positive, got {row.n_examples}"
    if not (math.isfinite(row.eps) and row.eps >= 0 and math.isfinite(row.train_eps) and row.train_eps >= 0):
        return f"eps and train_eps must be finite and >= 0, got {row.eps} and {row.train_eps}"
    try:
        stamp = datetime.fromisoformat(row.time)
    except ValueError:
        return f"time must be ISO-8601, got {row.time!r}"
    if stamp.tzinfo is None:
        return f"time must carry a UTC offset (e.g. {utc_now()}), got {row.time!r}"
    if row.selection not in SELECTIONS:
        return f"selection must be one of {', '.join(SELECTIONS)}, got {row.selection!r}"
    if row.check_examples < 0 or bool(row.checks_run) != (row.check_examples > 0):
        return f"checks_run {list(row.checks_run)} and check_examples {row.check_examples} disagree"
    return _outcomes_problem(row)


def utc_now() -> str:
    """The current time in the form `ResultRow.time` expects."""
    return datetime.now(UTC).isoformat(timespec="seconds")


# -- Parquet schema and migrations ------------------------------------------------------------

_ARROW_TYPES: dict[str, pa.DataType] = {
    "run_id": pa.string(),
    "time": pa.string(),
    "model": pa.string(),
    "dataset": pa.string(),
    "arch": pa.string(),
    "ads": pa.string(),
    "attention": pa.bool_(),
    "method": pa.string(),
    "train_eps": pa.float64(),
    "checkpoint_kind": pa.string(),
    "checkpoint_sha256": pa.string(),
    "threat_model": pa.string(),
    "eps": pa.float64(),
    "suite": pa.string(),
    "backend": pa.string(),
    "backend_version": pa.string(),
    "n_examples": pa.int64(),
    "clean_acc": pa.float64(),
    "robust_acc": pa.float64(),
    "per_attack": pa.string(),  # JSON object: attack names differ between suites
    "flags": pa.list_(pa.string()),
    "seed": pa.int64(),
    "device": pa.string(),
    "wall_seconds": pa.float64(),
    "ssmbench_version": pa.string(),
    "torch_version": pa.string(),
    "train_seed": pa.int64(),
    "selection": pa.string(),
    "split": pa.string(),
    "examples": pa.string(),
    "labels_sha256": pa.string(),
    "outcomes": pa.binary(),
    "outcome_attacks": pa.list_(pa.string()),
    "checks_run": pa.list_(pa.string()),
    "check_examples": pa.int64(),
}

# Column order follows ResultRow; a field without a type here fails at import, not at the first write.
SCHEMA = pa.schema(
    [pa.field(f.name, _ARROW_TYPES[f.name], nullable=False) for f in dataclasses.fields(ResultRow)],
    metadata={_VERSION_KEY: str(SCHEMA_VERSION).encode()},
)


def _from_v0(table: pa.Table) -> pa.Table:
    """Version 0 (the first draft of contract 4) named no model and recorded no sanity flags.

    Such rows get an empty model name (unknown) and no flags: the checks had not run, so none failed.
    """
    n = table.num_rows
    table = table.append_column("model", pa.array([""] * n, pa.string()))
    return table.append_column("flags", pa.array([[] for _ in range(n)], pa.list_(pa.string())))


def _from_v1(table: pa.Table) -> pa.Table:
    """Version 1 kept accuracies only: no per-example outcomes, no label hash, no check record.

    What is known is filled in: evaluate() always used the first N test examples, checkpoints
    of that time chose best on the test set, and the training seed was the row's seed (the only
    seed a study had). No checks are recorded as run, so such rows read "not checked": a v1 row
    cannot tell a passed check from one that never ran.
    """
    n = table.num_rows
    strings = pa.list_(pa.string())
    added = {
        "train_seed": table.column("seed"),
        "selection": pa.array(["test"] * n, pa.string()),
        "split": pa.array(["test"] * n, pa.string()),
        "examples": pa.array([first_n(k) for k in table.column("n_examples").to_pylist()], pa.string()),
        "labels_sha256": pa.array([""] * n, pa.string()),
        "outcomes": pa.array([b""] * n, pa.binary()),
        "outcome_attacks": pa.array([[] for _ in range(n)], strings),
        "checks_run": pa.array([[] for _ in range(n)], strings),
        "check_examples": pa.array([0] * n, pa.int64()),
    }
    for name, column in added.items():
        table = table.append_column(name, column)
    return table


# MIGRATIONS[v] turns a version-v table into a version v+1 table; reading applies them in turn.
MIGRATIONS: dict[int, Callable[[pa.Table], pa.Table]] = {0: _from_v0, 1: _from_v1}


def _schema_version(metadata: dict[bytes, bytes] | None, path: Path) -> int:
    # Files written before versioning carry no key; they are version 0.
    raw = (metadata or {}).get(_VERSION_KEY, b"0")
    try:
        version = int(raw)
    except ValueError:
        raise LeaderboardError(f"{path}: unreadable schema version {raw!r}") from None
    if version < 0:
        raise LeaderboardError(f"{path}: schema version {version} is not one ssmbench writes (0 to {SCHEMA_VERSION})")
    return version


def rows_sha256(table: pa.Table, version: bytes) -> str:
    """sha256 over the schema version, the column names and every row's values as JSON, in file order.

    Computed from decoded values rather than bytes, so it does not depend on how Parquet encoded
    them and any change that reading would show (a value, a row, a column name, the version that
    decides the migrations) changes it.
    """
    digest = hashlib.sha256(version + b"\n" + json.dumps(table.column_names).encode())
    for record in table.to_pylist():
        digest.update(json.dumps([record[name] for name in table.column_names], default=_json_value).encode() + b"\n")
    return digest.hexdigest()


def _json_value(value: object) -> str:
    """Bytes (the packed per-example outcomes) as hex; anything else JSON lacks (a date a foreign
    writer used) as its repr, which no table we wrote produces, so such a file fails the seal."""
    return value.hex() if isinstance(value, bytes) else repr(value)


def _check_seal(table: pa.Table, metadata: dict[bytes, bytes] | None, path: Path) -> None:
    """Refuse a sealed table whose rows differ from the seal; an unsealed (older) file passes."""
    sealed = (metadata or {}).get(_ROWS_SHA256_KEY)
    if sealed is not None and sealed.decode("ascii", "replace") != rows_sha256(table, (metadata or {}).get(_VERSION_KEY, b"")):
        raise LeaderboardError(f"{path}: the rows do not match the file's sha256 seal (changed or damaged after "
                               "writing); it was left as it is: restore it from a copy")


def _conform(table: pa.Table, version: int, path: Path) -> pa.Table:
    """Migrate a table read from `path` to the current schema, or refuse it."""
    if version > SCHEMA_VERSION:
        raise LeaderboardError(
            f"{path}: written with results schema version {version}, this ssmbench reads up to "
            f"{SCHEMA_VERSION}; upgrade ssmbench"
        )
    try:
        for step in range(version, SCHEMA_VERSION):
            table = MIGRATIONS[step](table)
    except KeyError as exc:  # a migration needs a column that a foreign file does not have
        raise LeaderboardError(f"{path}: not an ssmbench results file (no column {exc})") from None
    except pa.ArrowException as exc:
        raise LeaderboardError(f"{path}: its columns do not fit its schema version {version} ({exc})") from None
    if len(set(table.column_names)) != len(table.column_names):
        raise LeaderboardError(f"{path}: columns named twice; not a results file ssmbench wrote (version {version})")
    missing = [name for name in SCHEMA.names if name not in table.column_names]
    if missing:
        raise LeaderboardError(f"{path}: not an ssmbench results file (missing columns {', '.join(missing)})")
    with_nulls = [name for name in SCHEMA.names if table.column(name).null_count]
    if with_nulls:
        raise LeaderboardError(f"{path}: empty values in columns {', '.join(with_nulls)}")
    try:
        return table.select(SCHEMA.names).cast(SCHEMA)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
        raise LeaderboardError(f"{path}: columns of the wrong type ({exc})") from None


def _read_table(path: Path) -> pa.Table:
    """The file at `path` as a current-schema table; a missing or foreign file is a LeaderboardError."""
    if not path.is_file():
        raise LeaderboardError(f"{path}: no results file here; `ssmbench eval` appends to it")
    try:
        parquet = pq.ParquetFile(path, page_checksum_verification=True)
        table = parquet.read()
        metadata = parquet.schema_arrow.metadata
    except (pa.ArrowException, OSError, ValueError, IndexError) as exc:  # incl. a page checksum mismatch
        reason = " ".join(str(exc).split())[:300]
        raise LeaderboardError(f"{path}: not a readable Parquet file ({reason}); it was left as it is") from None
    try:
        _check_seal(table, metadata, path)
        conformed = _conform(table, _schema_version(metadata, path), path)
        conformed.to_pylist()  # decodes every value once: invalid UTF-8 in a string column is refused here
    except (UnicodeDecodeError, pa.ArrowException) as exc:
        raise LeaderboardError(f"{path}: undecodable values ({' '.join(str(exc).split())[:200]}); it was left as it is") from None
    return conformed


def _to_table(rows: Sequence[ResultRow]) -> pa.Table:
    columns: dict[str, list[Any]] = {name: [] for name in SCHEMA.names}
    for row in rows:
        for name in SCHEMA.names:
            columns[name].append(getattr(row, name))
    columns["per_attack"] = [json.dumps(d, sort_keys=True) for d in columns["per_attack"]]
    for name in ("flags", "outcome_attacks", "checks_run"):
        columns[name] = [list(f) for f in columns[name]]
    return pa.Table.from_pydict(columns, schema=SCHEMA)


def _to_rows(table: pa.Table, path: Path) -> list[ResultRow]:
    rows = []
    for record in table.to_pylist():
        try:
            record["per_attack"] = json.loads(record["per_attack"])
            rows.append(ResultRow(**record))
        except (ValueError, AttributeError, TypeError) as exc:  # bad JSON, a non-object, or a row out of range
            raise LeaderboardError(f"{path}: row {record['run_id']!r}: {exc}") from None
    return rows


def _write_sealed(path: Path, rows: Sequence[ResultRow]) -> None:
    """Write rows as a sealed table: the rows' sha256 in the metadata, page checksums on every page."""
    table = _to_table(rows)
    metadata = table.schema.metadata or {}
    table = table.replace_schema_metadata({**metadata, _ROWS_SHA256_KEY: rows_sha256(table, metadata[_VERSION_KEY]).encode()})
    with files.atomic_writer(path) as handle:
        pq.write_table(table, handle, write_page_checksum=True)


# -- reading and appending ----------------------------------------------------------------------


def read(path: str | os.PathLike[str]) -> list[ResultRow]:
    """All rows of a results file, oldest first, migrated to the current schema."""
    path = Path(path)
    return _to_rows(_read_table(path), path)


def query(
    path: str | os.PathLike[str],
    dataset: str | None = None,
    arch: str | None = None,
    method: str | None = None,
) -> list[ResultRow]:
    """The rows matching every filter that is given (exact match), oldest first."""
    wanted = {"dataset": dataset, "arch": arch, "method": method}
    return [
        row
        for row in read(path)
        if all(value is None or getattr(row, name) == value for name, value in wanted.items())
    ]


def append(path: str | os.PathLike[str], rows: Sequence[ResultRow]) -> None:
    """Add rows to the results file, creating it (and its folders) on first use.

    Atomic and safe when several processes append at once; a corrupt existing file, or one with an
    invalid row, is refused (LeaderboardError) and left untouched rather than replaced by the new
    rows alone. A symlink is followed first, so the lock and the replacement are the shared file's.
    An unwritable place is an OSError; `append_or_keep` turns it into kept rows.
    """
    path = Path(os.path.realpath(path))
    if not rows:
        return
    _to_table(rows)  # a row that cannot be stored fails before the lock is taken
    path.parent.mkdir(parents=True, exist_ok=True)
    with files.file_lock(_lock_path(path)):
        files.remove_stale_temps(path)
        old = _to_rows(_read_table(path), path) if path.exists() else []
        _write_sealed(path, [*old, *rows])


def remove(path: str | os.PathLike[str], unwanted: Callable[[ResultRow], bool]) -> list[ResultRow]:
    """Rewrite the results file without the rows `unwanted` picks, and return those rows.

    For retiring results that fall below a standard (`ssmbench leaderboard audit --drop`): the
    file is rewritten atomically under the same lock as `append`, so a concurrent append is
    neither lost nor raced, and a kill leaves the old file. Git history keeps what was removed.
    """
    path = Path(os.path.realpath(path))
    with files.file_lock(_lock_path(path)):
        files.remove_stale_temps(path)
        rows = _to_rows(_read_table(path), path)
        removed = [row for row in rows if unwanted(row)]
        if removed:
            _write_sealed(path, [row for row in rows if not unwanted(row)])
    return removed


def append_or_keep(path: str | os.PathLike[str], rows: Sequence[ResultRow], keep_dir: Path) -> None:
    """Append, or, when the leaderboard cannot take the rows, keep them and say where (RunError).

    An evaluation can take hours; a read-only folder, a full disk or a refused (damaged) results
    file must not throw it away. The rows go to a results file of their own in `keep_dir` (the
    run's folder), or in the temp folder when that is not writable either.
    """
    try:
        append(path, rows)
        return
    except (OSError, LeaderboardError) as exc:
        reason = " ".join(str(exc).split())  # an OSError names the path and errno: "[Errno 28] No space left..."
    name = f"unrecorded-{rows[0].run_id}.parquet"
    for folder in (keep_dir, Path(tempfile.gettempdir())):
        kept = folder / name
        try:
            append(kept, rows)
        except (OSError, LeaderboardError):
            continue
        raise RunError(f"could not record the results in {path} ({reason}); the {len(rows)} row(s) were saved to {kept}, "
                       "a results file of their own")
    raise RunError(f"could not record the results in {path} ({reason}) nor save them in {keep_dir} or the temp folder")


def _lock_path(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


# -- derived files ------------------------------------------------------------------------------


def markdown_for(parquet_path: str | os.PathLike[str]) -> Path:
    """The markdown that a results file renders to, beside it: results.parquet -> README.md (so
    a folder of results reads as a page), NAME.parquet -> NAME.md. ci/check_leaderboard.sh pairs
    the committed files by the same rule."""
    parquet_path = Path(parquet_path)
    name = "README" if parquet_path.stem == "results" else parquet_path.stem
    return parquet_path.with_name(f"{name}.md")


def publish(parquet_path: str | os.PathLike[str], markdown_path: str | os.PathLike[str]) -> str:
    """Render the results file to markdown, write it atomically, and return the text."""
    text = render_markdown(read(parquet_path))
    markdown_path = Path(markdown_path)
    markdown_path.parent.mkdir(parents=True, exist_ok=True)
    files.atomic_write_bytes(markdown_path, text.encode())
    return text


def markdown_is_fresh(parquet_path: str | os.PathLike[str], markdown_path: str | os.PathLike[str]) -> bool:
    """Whether the markdown file holds exactly what `publish` would write now (missing = stale)."""
    expected = render_markdown(read(parquet_path))
    markdown_path = Path(markdown_path)
    return markdown_path.is_file() and markdown_path.read_text(encoding="utf-8") == expected


EXPORT_FORMATS = ("csv", "robustbench")


def export(rows: Sequence[ResultRow], fmt: str, out: str | os.PathLike[str]) -> list[Path]:
    """Write rows for other tools and return the files written.

    "csv": one file `out`, one line per row, every field (accuracies as fractions).
    "robustbench": a folder `out` with `<dataset>/<threat model>/<name>.json` per model, in
    RobustBench's model_info format; only models with an AutoAttack result have such a file.
    """
    out = Path(out)
    if fmt == "csv":
        out.parent.mkdir(parents=True, exist_ok=True)
        text = _csv_text(rows)
        files.atomic_write_bytes(out, text.encode())
        return [out]
    if fmt == "robustbench":
        entries = robustbench_entries(rows)
        if not entries:
            raise LeaderboardError("no AutoAttack results to export; RobustBench ranks models by AutoAttack")
        written = []
        for relative, entry in entries.items():
            target = _inside(out, relative)
            target.parent.mkdir(parents=True, exist_ok=True)
            text = json.dumps(entry, indent=2) + "\n"
            files.atomic_write_bytes(target, text.encode())
            written.append(target)
        return written
    raise LeaderboardError(f"unknown export format {fmt!r}; choose one of {', '.join(EXPORT_FORMATS)}")


# One file name part: what a dataset, threat model or model name may be once it becomes a path.
_PATH_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def _inside(out: Path, relative: str) -> Path:
    """out/<dataset>/<threat model>/<name>.json, refused unless each part is one plain name (rows are
    data, not paths to write to)."""
    parts = relative.split("/")
    bad = [part for part in parts if not _PATH_PART.match(part) or part in (".", "..")]
    if bad or len(parts) != 3:
        bad = bad or ["/".join(parts[:-2])]
        raise LeaderboardError(f"cannot export {relative!r}: {bad[0]!r} is not a plain name (letters, digits, '.', "
                               "'-', '_'); the row's dataset or threat model would make a path outside --out")
    return out.joinpath(*parts)


def _csv_text(rows: Sequence[ResultRow]) -> str:
    """Every field of every row; per_attack as JSON, lists joined by ';' and the packed outcomes
    in base64, so a cell stays a cell."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(SCHEMA.names)
    for row in rows:
        values = [getattr(row, name) for name in SCHEMA.names]
        values[SCHEMA.names.index("per_attack")] = json.dumps(row.per_attack, sort_keys=True)
        for name in ("flags", "outcome_attacks", "checks_run"):
            values[SCHEMA.names.index(name)] = ";".join(getattr(row, name))
        values[SCHEMA.names.index("outcomes")] = b64encode(row.outcomes).decode()
        writer.writerow(values)
    return buffer.getvalue()
