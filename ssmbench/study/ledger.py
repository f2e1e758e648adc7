"""A study's cost ledger: each finished cell's measured seconds, kept beside its results file.

A cell's timing lives in its run folder's done.json, which is scratch: a fresh clone or a wiped
machine has the results file (committed by `--commit`) but no run folders, and then `--dry-run`
could only count the cells as done, untimed. The ledger (NAME.cells.json beside NAME.parquet) holds
the same figures as the markers, one entry per finished cell, keyed by cell name and tied to the
run id of its rows, and `--commit` commits it with the rows. Two runners of one study update it
under a lock; every write is atomic, so a kill leaves the previous ledger whole.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from model_zoo.errors import UsageError
from model_zoo.files import atomic_write_bytes, file_lock

FORMAT = "ssmbench-study-cells/1"
SUFFIX = ".cells.json"
LOCK_SUFFIX = ".lock"
ENTRY_FIELDS = ("run_id", "seconds", "rows", "epochs")


def ledger_path(leaderboard: Path) -> Path:
    """leaderboards/NAME.parquet -> leaderboards/NAME.cells.json."""
    return leaderboard.with_name(leaderboard.stem + SUFFIX)


def read_ledger(path: Path) -> dict[str, dict[str, Any]]:
    """Cell name -> {run_id, seconds, rows, epochs}; {} when there is no ledger yet.

    A file that is not a ledger is refused with its path and reason (it is never overwritten)."""
    if not path.is_file():
        return {}
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path}: unreadable study cost ledger ({exc}); restore it from git or delete it") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT or not isinstance(document.get("cells"), dict):
        raise UsageError(f"{path}: not a study cost ledger (no format {FORMAT!r}); move it away or delete it")
    cells: dict[str, dict[str, Any]] = document["cells"]
    for name, entry in cells.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("run_id"), str) \
                or not isinstance(entry.get("seconds"), int | float):
            raise UsageError(f"{path}: cell {name!r} has no run_id and seconds; restore the ledger from git or delete it")
    return cells


def record_cell(path: Path, cell: str, entry: dict[str, Any]) -> None:
    """Add or replace one finished cell's entry (only ENTRY_FIELDS are kept)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(path.with_name(path.name + LOCK_SUFFIX)):
        cells = read_ledger(path)
        cells[cell] = {key: entry[key] for key in ENTRY_FIELDS if key in entry}
        document = {"format": FORMAT, "cells": dict(sorted(cells.items()))}
        atomic_write_bytes(path, (json.dumps(document, indent=1) + "\n").encode())


def timed_entry(path: Path, cell: str, run_id: str) -> dict[str, Any] | None:
    """The ledger's entry for `cell` if it belongs to the rows of `run_id`, else None."""
    entry = read_ledger(path).get(cell)
    return entry if entry is not None and entry.get("run_id") == run_id else None
