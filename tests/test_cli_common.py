"""The shared progress bar: every long command shows done/total, throughput and an ETA."""

from __future__ import annotations

from types import SimpleNamespace

from rich.progress import TimeRemainingColumn

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
