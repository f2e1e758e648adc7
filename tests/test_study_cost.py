"""A study's cost: measured seconds of finished cells, median-of-kind estimates for the rest."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from model_zoo.errors import UsageError
from ssmbench.study import Cell, load_study, plan, run_study
from ssmbench.study.cost import study_cost
from ssmbench.study.ledger import ledger_path, read_ledger, record_cell, timed_entry
from ssmbench.study.runner import DONE, FAILED, PENDING, CellStatus
from tests.test_study import dry_run, write_study


def done(cell: Cell, seconds: float) -> CellStatus:
    return CellStatus(cell, DONE, seconds=seconds)


def test_pending_cells_are_estimated_by_the_median_of_their_kind_only() -> None:
    s4, mamba = Cell("s4", "pgd", "none", False), Cell("mamba", "pgd", "none", False)
    statuses = [
        done(s4, 100.0), done(Cell("s4", "pgd", "none", False, seed=1), 300.0), done(Cell("s4", "pgd", "none", False, seed=2), 140.0),
        CellStatus(Cell("s4", "pgd", "none", False, seed=3), PENDING),
        CellStatus(Cell("s4", "pgd", "none", False, seed=4), FAILED, seconds=5.0),  # a failed cell is still to do
        CellStatus(mamba, PENDING),  # no finished mamba cell: not extrapolated from s4
        CellStatus(Cell("s4", "pgd", "tanh", False), PENDING),  # another kind
    ]
    cost = study_cost(statuses)
    assert (cost.done_cells, cost.done_seconds) == (3, 540.0)
    assert (cost.estimated_cells, cost.estimated_seconds, cost.unestimated_cells) == (2, 280.0, 2)
    assert cost.describe() == ("3 cells done in 0.1 h of runner time; 4 to go: ~0.1 h for 2 of them, "
                               "2 not estimated (no finished cell of their kind yet)")


def test_a_cell_with_autoattack_does_not_estimate_its_pgd10_only_seeds() -> None:
    """A grid's own suites make another kind: the headline seed with AutoAttack (hours at L = 784)
    must not price the same model's PGD-10-only seeds."""
    with_aa = Cell("s4", "pgd", "none", False, seed=0, suites=("pgd10", "autoattack"))
    statuses = [done(with_aa, 3000.0), CellStatus(Cell("s4", "pgd", "none", False, seed=1, suites=("pgd10",)), PENDING),
                CellStatus(Cell("s4", "pgd", "none", False, seed=2, suites=("pgd10", "autoattack")), PENDING)]
    cost = study_cost(statuses)
    assert (cost.estimated_cells, cost.estimated_seconds, cost.unestimated_cells) == (1, 3000.0, 1)


def test_dry_run_shows_each_finished_cells_seconds_and_the_total(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_study(tmp_path)
    config = load_study(path)
    first = plan(config)[0].cell
    run_dir = config.run_dir(first)
    run_dir.mkdir(parents=True)
    (run_dir / "done.json").write_text(json.dumps({"status": DONE, "cell": first.name, "run_id": "x", "rows": 1, "epochs": 2, "seconds": 7200.0}))
    code, out = dry_run(path)
    assert code == 0
    assert "7200" in out and "Cost: 1 cell done in 2.0 h of runner time; 1 to go: 1 not estimated" in " ".join(out.split())


def test_the_ledger_keeps_every_finished_cell_and_refuses_a_foreign_file(tmp_path: Path) -> None:
    path = ledger_path(tmp_path / "study.parquet")
    assert path == tmp_path / "study.cells.json" and read_ledger(path) == {}
    record_cell(path, "s4-pgd-none", {"status": DONE, "run_id": "a", "seconds": 10.0, "rows": 4, "epochs": 2})
    record_cell(path, "dss-pgd-none", {"run_id": "b", "seconds": 20.0, "rows": 4, "epochs": 2})
    record_cell(path, "s4-pgd-none", {"run_id": "c", "seconds": 30.0, "rows": 4, "epochs": 2})  # a rerun replaces it
    assert read_ledger(path) == {"dss-pgd-none": {"run_id": "b", "seconds": 20.0, "rows": 4, "epochs": 2},
                                 "s4-pgd-none": {"run_id": "c", "seconds": 30.0, "rows": 4, "epochs": 2}}
    assert timed_entry(path, "s4-pgd-none", "c") is not None
    assert timed_entry(path, "s4-pgd-none", "a") is None  # the entry of another run's rows does not time these
    foreign = tmp_path / "other.cells.json"
    foreign.write_text(json.dumps({"cells": {}}))
    with pytest.raises(UsageError, match="other.cells.json: not a study cost ledger"):
        read_ledger(foreign)
    foreign.write_text("{")
    with pytest.raises(UsageError, match="other.cells.json: unreadable study cost ledger"):
        record_cell(foreign, "x", {"run_id": "x", "seconds": 1.0})
    assert foreign.read_text() == "{"  # refused, never overwritten


def test_a_finished_cell_is_timed_from_the_ledger_once_its_run_folder_is_gone(tmp_path: Path) -> None:
    path = write_study(tmp_path)
    config = load_study(path)
    cell = plan(config)[0].cell
    run_study(config, device="cpu")
    seconds = json.loads((config.run_dir(cell) / "done.json").read_text())["seconds"]
    shutil.rmtree(config.out)
    statuses = plan(config)
    assert [item.status for item in statuses] == [DONE, DONE]
    assert statuses[0].seconds == seconds and "timed in its ledger" in statuses[0].message
    assert study_cost(statuses).untimed_cells == 0
