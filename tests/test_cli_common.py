"""What every command shares: the progress bar (done/total, throughput, ETA) and error lines."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
from rich.progress import TimeRemainingColumn

from ssmbench.cli import main
from ssmbench.cli._common import SpeedColumn, progress_bar


def test_progress_bar_has_throughput_and_eta_columns() -> None:
    bar = progress_bar(unit="samples", decimals=1)
    speed = [column for column in bar.columns if isinstance(column, SpeedColumn)]
    assert len(speed) == 1 and any(isinstance(column, TimeRemainingColumn) for column in bar.columns)
    assert speed[0].render(SimpleNamespace(speed=1234.56)).plain == "1,234.6 samples/s"
    assert speed[0].render(SimpleNamespace(speed=None)).plain == ""  # before two updates: blank, not 0


def test_progress_bar_without_unit_drops_throughput() -> None:
    bar = progress_bar(unit=None)
    assert not any(isinstance(column, SpeedColumn) for column in bar.columns)
    assert any(isinstance(column, TimeRemainingColumn) for column in bar.columns)


@pytest.mark.parametrize(("rank", "printed"), [("0", "error (rank 0): "), ("1", "")])
def test_usage_error_under_torchrun_is_printed_once(monkeypatch, capsys, rank: str, printed: str) -> None:
    """Every rank gets the same bad argument: rank 0 says so, the others exit with the same code quietly."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", rank)
    assert main(["leaderboard", "show", "--path", "/no/such/results.parquet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(printed) and ("results.parquet" in err) == bool(printed)


def test_run_error_under_torchrun_names_the_rank(monkeypatch, capsys, tmp_path) -> None:
    markdown = tmp_path / "README.md"
    markdown.write_text("stale\n", encoding="utf-8")
    results = tmp_path / "results.parquet"
    shutil.copy(Path(__file__).parents[1] / "leaderboards" / "results.parquet", results)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert main(["leaderboard", "publish", "--path", str(results), "--out", str(markdown), "--check"]) == 1
    assert capsys.readouterr().err.startswith("error (rank 1): ")
