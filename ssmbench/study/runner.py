"""Running a study's cells: each under an exclusive lock on its run directory, resumable, marked done
(or failed) by an atomically written done.json as its very last step."""



from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from model_zoo import build_model
from model_zoo.checkpoints import CheckpointMeta, file_sha256, load, read_meta
from model_zoo.devices import resolve_device
from model_zoo.errors import RunError, UsageError
from model_zoo.files import atomic_write_bytes, file_lock
from model_zoo.training import TrainObserver, read_history, seed_everything, train
from model_zoo.training.trainer import BEST, LAST, STATE
from ssmbench import data
from ssmbench.checks import CheckConfig
from ssmbench.evaluate import EvalResult, EvalSettings, evaluate
from ssmbench.leaderboard import LeaderboardError, ResultRow, append_or_keep, read
from ssmbench.records import result_row
from ssmbench.study.config import StudyConfig
from ssmbench.study.grid import Cell, Skipped, expand, select
from ssmbench.study.ledger import ledger_path, record_cell, timed_entry

MARKER, LOCK = "done.json", ".lock"
DONE, FAILED, PENDING, RUNNING = "done", "failed", "pending", "running"
KINDS = ((BEST, "best"), (LAST, "last"))


# -- status -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CellStatus:
    """Where a cell stands: pending, running (another process holds it), done or failed."""

    cell: Cell
    status: str
    message: str = ""
    epochs_done: int = 0
    seconds: float | None = None  # a finished cell's wall time in the process that ran it (done.json)


def read_marker(run_dir: Path) -> dict[str, Any] | None:
    """The cell's done.json (status done or failed), or None while the cell is unfinished."""
    path = run_dir / MARKER
    if not path.is_file():
        return None
    try:
        marker = json.loads(path.read_text())
    except ValueError as exc:
        raise UsageError(f"{path}: unreadable study marker ({exc}); delete it to rerun the cell") from None
    if not isinstance(marker, dict) or marker.get("status") not in (DONE, FAILED):
        raise UsageError(f"{path}: not a study marker (no done/failed status); delete it to rerun the cell")
    return marker


def recorded_cells(config: StudyConfig) -> dict[Path, str]:
    """Run folder (absolute) -> run id, for every folder that the study's leaderboard has rows from.

    The leaderboard is the durable record of a study (`--commit` puts it in git after every cell);
    run folders are scratch that a fresh clone or a new machine does not have. Reading the rows
    lets a study resumed there count those cells as done instead of training them again and
    recording them twice. An unreadable leaderboard gives {}: the first append refuses it with its
    path and reason, before any row is lost.
    """
    if not config.leaderboard.is_file():
        return {}
    try:
        rows = read(config.leaderboard)
    except LeaderboardError:
        return {}
    recorded: dict[Path, str] = {}
    for row in rows:  # the first run of a folder is the study's; a later `ssmbench eval` of its checkpoint is not
        recorded.setdefault(Path(os.path.abspath(Path(row.model).parent)), row.run_id)
    return recorded


def finished_marker(config: StudyConfig, cell: Cell, recorded: dict[Path, str]) -> dict[str, Any] | None:
    """The cell's done.json, else a done marker made from its leaderboard rows, else None (unfinished)."""
    run_dir = config.run_dir(cell)
    marker = read_marker(run_dir)
    if marker is not None:
        return marker
    run_id = recorded.get(Path(os.path.abspath(run_dir)))
    if run_id is None:
        return None
    entry = timed_entry(ledger_path(config.leaderboard), cell.name, run_id)
    if entry is not None:  # timed when it ran: the ledger committed with the rows
        return {"status": DONE, "cell": cell.name, "message": f"rows in {config.leaderboard}, timed in its ledger", **entry}
    return {"status": DONE, "cell": cell.name, "run_id": run_id,
            "message": f"rows in {config.leaderboard}; its run folder has no done.json (not timed)"}


def _is_locked(run_dir: Path) -> bool:
    """Whether another process holds the cell now (checking never creates the lock file)."""
    lock = run_dir / LOCK
    if not lock.exists():
        return False
    with _cell_lock(run_dir) as acquired:
        return not acquired


def _epochs_done(run_dir: Path) -> int:
    history = run_dir / "history.parquet"
    return len(read_history(history)) if history.is_file() else 0


def status(config: StudyConfig, cell: Cell, recorded: dict[Path, str] | None = None) -> CellStatus:
    """`recorded` is `recorded_cells(config)`, read once by callers that ask about many cells."""
    run_dir = config.run_dir(cell)
    marker = finished_marker(config, cell, recorded_cells(config) if recorded is None else recorded)
    if marker is not None:
        return CellStatus(cell, marker["status"], marker.get("message", ""), marker.get("epochs", 0), marker.get("seconds"))
    state = RUNNING if _is_locked(run_dir) else PENDING
    return CellStatus(cell, state, epochs_done=_epochs_done(run_dir))


def plan(config: StudyConfig, shard: tuple[int, int] | None = None) -> list[CellStatus]:
    """The status of every cell this runner would consider, without running anything."""
    cells, _ = expand(config)
    recorded = recorded_cells(config)
    return [status(config, cell, recorded) for cell in select(cells, shard)]


# -- running ----------------------------------------------------------------------------------------


class StudyObserver(TrainObserver):
    """Progress hooks (training's, plus these); the defaults do nothing.

    An exception raised from a hook stops the study; every finished cell stays finished and the
    interrupted one resumes where its files left it.
    """

    def on_study_start(self, cells: Sequence[CellStatus], skipped: Sequence[Skipped]) -> None:
        """The cells this runner will consider, as they stand now, and the refused combinations."""

    def on_cell_start(self, cell: Cell, index: int, total: int, resumed_epochs: int) -> None:
        """Cell `index` (1-based) of `total` starts; `resumed_epochs` were trained before."""

    def on_eval(self, cell: Cell, kind: str, suite: str, done: int, total: int, attack: str) -> None:
        """Evaluating checkpoint `kind` with `suite`: `done` of `total` examples, `attack` running."""

    def on_cell_end(self, outcome: CellOutcome) -> None:
        """A cell finished, failed, or was skipped (done before, or held by another process)."""


@dataclass(frozen=True)
class CellOutcome:
    cell: Cell
    status: str  # done, failed, or 'skipped: ...' for cells this runner did not run
    message: str = ""
    rows: tuple[ResultRow, ...] = ()
    seconds: float = 0.0

    @property
    def ran(self) -> bool:
        return self.status in (DONE, FAILED)


@dataclass(frozen=True)
class StudyReport:
    outcomes: tuple[CellOutcome, ...]
    skipped: tuple[Skipped, ...]

    @property
    def failed(self) -> list[CellOutcome]:
        return [o for o in self.outcomes if o.status == FAILED]


@contextlib.contextmanager
def _cell_lock(run_dir: Path) -> Iterator[bool]:
    """Try to hold the cell's lock without waiting; yields whether it is ours."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with file_lock(run_dir / LOCK, wait=False) as acquired:
        yield acquired


@dataclass(frozen=True)
class _Data:
    train: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor]
    augment: bool


def run_study(
    config: StudyConfig,
    observer: StudyObserver | None = None,
    *,
    shard: tuple[int, int] | None = None,
    device: str | torch.device | None = None,
    data_dir: str | Path | None = None,
) -> StudyReport:
    """Run every cell of the (sharded) grid that is neither done nor held by another process."""
    observer = observer or StudyObserver()
    target = resolve_device(device)
    cells, skipped = expand(config)
    selected = select(cells, shard)
    recorded = recorded_cells(config)
    observer.on_study_start([status(config, cell, recorded) for cell in selected], skipped)
    loaded: _Data | None = None  # only a runner with work to do reads the data
    outcomes = []
    for index, cell in enumerate(selected, start=1):
        marker = finished_marker(config, cell, recorded)
        if marker is not None:
            outcome = CellOutcome(cell, f"skipped: {marker['status']} before")
        else:
            loaded = loaded or _load_data(config.dataset, data_dir)
            outcome = _run_locked(config, cell, index, len(selected), loaded, target, observer)
        outcomes.append(outcome)
        observer.on_cell_end(outcome)
    return StudyReport(tuple(outcomes), tuple(skipped))


def _load_data(dataset: str, data_dir: str | Path | None) -> _Data:
    return _Data(data.load_split(dataset, "train", data_dir), data.load_split(dataset, "test", data_dir),
                 data.get_dataset(dataset).augment)


def _run_locked(
    config: StudyConfig, cell: Cell, index: int, total: int, loaded: _Data, device: torch.device, observer: StudyObserver
) -> CellOutcome:
    run_dir = config.run_dir(cell)
    with _cell_lock(run_dir) as acquired:
        if not acquired:
            return CellOutcome(cell, "skipped: running in another process")
        marker = read_marker(run_dir)
        if marker is not None:  # finished by another process since we looked
            return CellOutcome(cell, f"skipped: {marker['status']} before")
        observer.on_cell_start(cell, index, total, _epochs_done(run_dir))
        started = time.perf_counter()
        try:
            rows, epochs = _run_cell(config, cell, loaded, device, observer)
        except RunError as exc:
            seconds = time.perf_counter() - started
            _write_marker(run_dir, {"status": FAILED, "cell": cell.name, "message": str(exc), "seconds": seconds})
            return CellOutcome(cell, FAILED, str(exc), seconds=seconds)
        seconds = time.perf_counter() - started
        marker = {"status": DONE, "cell": cell.name, "run_id": rows[0].run_id, "rows": len(rows), "epochs": epochs,
                  "seconds": seconds}
        _write_marker(run_dir, marker)
        record_cell(ledger_path(config.leaderboard), cell.name, marker)
        return CellOutcome(cell, DONE, rows=tuple(rows), seconds=seconds)


def _write_marker(run_dir: Path, marker: dict[str, Any]) -> None:
    atomic_write_bytes(run_dir / MARKER, (json.dumps(marker, indent=2) + "\n").encode())


def _run_cell(
    config: StudyConfig, cell: Cell, loaded: _Data, device: torch.device, observer: StudyObserver
) -> tuple[list[ResultRow], int]:
    """Train (or resume), evaluate best and last, record the rows; returns them and the epochs trained."""
    run_dir = config.run_dir(cell)
    seed_everything(cell.seed)
    model = build_model(cell.arch, config.dataset, cell.ads, cell.attention, **config.model_overrides(cell.arch)).to(device)
    result = train(
        model, loaded.train, loaded.test, config.train_config(cell.method, cell.seed), run_dir,
        augment=data.augment if loaded.augment else None, observer=observer, resume=(run_dir / STATE).is_file(),
    )
    evaluated: list[_Evaluated] = []
    for filename, kind in KINDS:
        path = run_dir / filename
        meta, raw = read_meta(path)
        same = next((item for item in evaluated if item.weights_sha256 == raw["tensors_sha256"]), None)
        if same is not None:  # best is the last epoch: same weights, same results (AutoAttack is costly)
            evaluated.append(dataclasses.replace(same, path=path, meta=meta, sha256=file_sha256(path)))
        else:
            evaluated.append(_evaluate(config, cell, path, kind, loaded.test, device, observer))
    run_id = _run_id(config, cell, [item.sha256 for item in evaluated])
    rows = [result_row(run_id, str(item.path), item.meta, res, item.sha256) for item in evaluated for res in item.results]
    _record(config.leaderboard, rows)
    return rows, len(result.history)


@dataclass(frozen=True)
class _Evaluated:
    path: Path
    meta: CheckpointMeta
    sha256: str  # of the file (whose metadata says best or last)
    weights_sha256: str  # of the tensors alone
    results: tuple[EvalResult, ...]


def _evaluate(
    config: StudyConfig, cell: Cell, path: Path, kind: str, test: tuple[torch.Tensor, torch.Tensor],
    device: torch.device, observer: StudyObserver,
) -> _Evaluated:
    """Every suite on one checkpoint, each resumable from a state file in the run directory."""
    model, meta = load(path, device)
    sha256, weights = file_sha256(path), read_meta(path)[1]["tensors_sha256"]
    images, labels = test
    results = []
    for suite in cell.suites_in(config):
        n = config.examples(suite, len(images))

        def progress(done: int, total: int, attack: str, suite: str = suite) -> None:
            observer.on_eval(cell, kind, suite, done, total, attack)

        try:
            settings = EvalSettings(
                eps=config.train.threat.eps, norm=config.train.threat.norm, n_examples=n, batch_size=config.eval_batch_size, device=device,
                backend=config.backend, version=config.aa_version, seed=cell.seed,
                checks=CheckConfig() if config.checks else None,
                state_path=path.parent / f"eval-{kind}-{suite}.json",
            )
            results.append(evaluate(model, (images, labels), suite, settings, progress=progress))
        except RunError:
            raise
        except RuntimeError as exc:  # a torch failure inside an attack (e.g. out of memory) fails the cell
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise RunError(f"{path}: {suite} evaluation failed: {reason}") from exc
    return _Evaluated(path, meta, sha256, weights, tuple(results))


def _run_id(config: StudyConfig, cell: Cell, hashes: list[str]) -> str:
    """Stable for one cell's checkpoints and evaluation settings, so a rerun never records twice."""
    key = json.dumps({"cell": cell.name, "checkpoints": hashes, "suites": cell.suites_in(config), "eps": config.train.threat.eps,
                      "eval": config.train.eval_examples, "aa": config.aa_examples, "backend": config.backend,
                      "version": config.aa_version, "seed": cell.seed}, sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def _record(leaderboard: Path, rows: list[ResultRow]) -> None:
    """Append unless a run killed between its append and its marker already recorded these rows."""
    try:
        if leaderboard.is_file() and any(row.run_id == rows[0].run_id for row in read(leaderboard)):
            return
    except LeaderboardError:
        pass  # a refused file: append_or_keep keeps the rows and says so
    append_or_keep(leaderboard, rows, Path(rows[0].model).parent)  # unwritable: kept in the cell's folder, the cell fails
