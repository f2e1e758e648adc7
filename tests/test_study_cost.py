"""A study's cost: measured seconds of finished cells, median-of-kind estimates for the rest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ssmbench.study import Cell, load_study, plan
from ssmbench.study.cost import study_cost
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
