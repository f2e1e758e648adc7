"""A study: a grid of train + evaluate cells described by one TOML file, resumable cell by cell.

    [study]
    dataset = "digits"
    epochs = 6
    eval_examples = 360          # PGD-10 subset: per-epoch and final
    val_examples = 144           # held-out training images that select best (0: the test subset does)
    aa_examples = 64             # AutoAttack on the first N test images
    seeds = [0, 1, 2]            # default [0]: every cell is trained and evaluated once per seed
    checks = false               # default true; rows of a study without checks say "not checked"
    out = "runs/study-digits"

    [study.model]                # optional: overrides of the dataset preset, for every cell
    d_model = 64
    [study.model.mamba]          # optional: overrides for one architecture only
    d_state = 16

    [[grid]]                     # a cartesian product; several [[grid]] tables are unioned
    models = ["s4", "dss"]
    methods = ["st", "pgd"]
    ads = ["none", "tanh"]       # default ["none"]
    attention = [false]          # default [false]

    >>> config = load_study("studies/digits.toml")
    >>> report = run_study(config, observer)     # trains and evaluates every cell not yet done
    >>> markdown = render_study(config)

A cell (architecture x method x AdS x attention x seed) is the run directory
`<out>/<arch>-<method>-<ads>[-attn]` for seed 0 (the name studies had before seeds existed, so
they stay done) and `<out>/<arch>-<method>-<ads>[-attn]-seed<N>` for seed N. Running it means: train (resuming from the trainer's state
file after an interruption), evaluate best and last with every suite (each evaluation resumes
from its own per-batch state file; when best is the last epoch its results serve both), append the rows to the leaderboard, and write `done.json`
atomically as the very last step, so a rerun skips the cell. A combination that the model zoo
refuses (Mega has no SSM output for AdS to gate) is skipped with the zoo's reason. A cell whose
run fails (RunError: training diverged, an attack ran out of memory) gets a `done.json` saying
so and the study goes on; delete that file to retry the cell.

Several processes may work through one study at once: a cell is run under an exclusive `flock`
on `<run dir>/.lock`, and a runner skips the cells another one holds (the kernel drops the lock
when its holder dies). `shard=(i, k)` restricts a runner to every k-th cell of the grid.

The library never prints: progress goes to a StudyObserver that the CLI renders.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import itertools
import json
import os
import time
import tomllib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import torch

from model_zoo import build_model, list_models, make_config
from model_zoo.ads import ADS_CHOICES
from model_zoo.checkpoints import CheckpointMeta, atomic_write_bytes, file_sha256, load, read_meta
from model_zoo.config import ModelConfig, check_values
from model_zoo.errors import RunError, UsageError, ZooError
from model_zoo.limits import SEED_RANGE
from model_zoo.training import TrainConfig, TrainObserver, list_methods, read_history, seed_everything, train
from model_zoo.training.trainer import BEST, LAST, STATE
from ssmbench import data
from ssmbench.attacks import AUTOATTACK_VERSIONS, BACKENDS, get_suite_spec
from ssmbench.checks import CheckConfig
from ssmbench.evaluate import EvalResult, evaluate
from ssmbench.home import user_results
from ssmbench.leaderboard import LeaderboardError, ResultRow, append_or_keep, read
from ssmbench.leaderboard_render import PREAMBLE, render_markdown
from ssmbench.records import result_row

MARKER, LOCK = "done.json", ".lock"
DONE, FAILED, PENDING, RUNNING = "done", "failed", "pending", "running"
KINDS = ((BEST, "best"), (LAST, "last"))
AUTOATTACK_EXAMPLES = 2000  # the paper's protocol: AutoAttack on the first 2000 test images
# ModelConfig fields that the dataset or the grid decide; [study.model] cannot override them.
_FIXED_MODEL_FIELDS = {"arch", "dataset", "ads", "attention", "channels", "height", "width", "classes"}


@dataclass(frozen=True)
class Grid:
    """One cartesian product of cells: every model x method x AdS x attention."""

    models: tuple[str, ...]
    methods: tuple[str, ...]
    ads: tuple[str, ...] = ("none",)
    attention: tuple[bool, ...] = (False,)

    def __post_init__(self) -> None:
        names = (("models", self.models, list_models()), ("methods", self.methods, list_methods()),
                 ("ads", self.ads, list(ADS_CHOICES)))
        for option, values, known in names:
            unknown = [str(v) for v in values if v not in known]
            if unknown or not values:
                raise UsageError(f"grid {option}: unknown or missing {', '.join(unknown)}; choose from {', '.join(known)}")
        if not self.attention or not all(isinstance(v, bool) for v in self.attention):
            raise UsageError(f"grid attention must list true and/or false, got {list(self.attention)}")


@dataclass(frozen=True)
class Cell:
    """One model to train and evaluate; the seed fixes its weights, data order and attacks."""

    arch: str
    method: str
    ads: str
    attention: bool
    seed: int = 0

    @property
    def name(self) -> str:
        """The run directory's name: `<arch>-<method>-<ads>[-attn]`, then `-seed<N>` unless N = 0."""
        return f"{self.arch}-{self.method}-{self.ads}{'-attn' if self.attention else ''}{f'-seed{self.seed}' if self.seed else ''}"


@dataclass(frozen=True)
class Skipped:
    """A combination of the grid that cannot be built, and why."""

    cell: Cell
    reason: str


@dataclass(frozen=True)
class StudyConfig:
    """Everything a study does. Defaults are the paper's; examples count from the start of a split.

    eval_examples: test images for the per-epoch PGD-10 and for the final PGD-10 evaluation
    (None = the whole test split). val_examples: training images held out to select the best
    checkpoint by PGD-10 (TrainConfig.val_examples); 0 selects on the test images instead. aa_examples: the first N test images for the
    AutoAttack suites (capped at the split). model: overrides of the dataset preset for every cell;
    a key that names an architecture holds overrides for that architecture only.
    """

    grids: tuple[Grid, ...]
    dataset: str = "digits"
    name: str = ""
    # Training defaults are the trainer's (the paper's), so a study and `ssmbench train` agree.
    epochs: int = TrainConfig.epochs
    batch_size: int = TrainConfig.batch_size
    lr: float = TrainConfig.lr
    weight_decay: float = TrainConfig.weight_decay
    eps: float = TrainConfig.eps
    alpha: float = TrainConfig.alpha
    steps: int = TrainConfig.steps
    grad_clip: float | None = TrainConfig.grad_clip
    train_examples: int | None = None
    eval_examples: int | None = None
    val_examples: int = TrainConfig.val_examples
    aa_examples: int = AUTOATTACK_EXAMPLES
    aa_version: str = "standard"
    backend: str = "official"
    suites: tuple[str, ...] = ("pgd10", "autoattack")
    checks: bool = True
    eval_batch_size: int = 256
    seeds: tuple[int, ...] = (0,)
    out: Path = Path("runs/study")
    leaderboard: Path = field(default_factory=user_results)  # the published studies name theirs
    model: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.grids:
            raise UsageError("a study needs at least one [[grid]] table")
        data.get_dataset(self.dataset)
        for suite in self.suites:
            get_suite_spec(suite)
        if not self.suites:
            raise UsageError("suites must name at least one attack suite")
        for option, value, choices in (("backend", self.backend, BACKENDS), ("aa_version", self.aa_version, AUTOATTACK_VERSIONS)):
            if value not in choices:
                raise UsageError(f"{option} must be one of {', '.join(choices)}, got {value!r}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds) or not all(
            isinstance(seed, int) and not isinstance(seed, bool) and SEED_RANGE[0] <= seed <= SEED_RANGE[1] for seed in self.seeds
        ):
            raise UsageError(f"seeds must list distinct integers in [{SEED_RANGE[0]}, {SEED_RANGE[1]}], e.g. [0, 1, 2]; got {list(self.seeds)}")
        for option, value in (("aa_examples", self.aa_examples), ("eval_batch_size", self.eval_batch_size)):
            if value < 1:
                raise UsageError(f"{option} must be >= 1, got {value}")
        _check_overrides("[study.model]", {k: v for k, v in self.model.items() if k not in list_models()})
        for arch in sorted(set(self.model) & set(list_models())):
            if not isinstance(self.model[arch], dict):
                raise UsageError(f"[study.model.{arch}] must be a table of overrides, got {self.model[arch]!r}")
            _check_overrides(f"[study.model.{arch}]", self.model[arch])
        for method in dict.fromkeys(m for grid in self.grids for m in grid.methods):
            self.train_config(method, self.seeds[0])  # TrainConfig validates the numbers

    @property
    def title(self) -> str:
        return self.name or self.out.name

    def train_config(self, method: str, seed: int) -> TrainConfig:
        return TrainConfig(
            method=method, epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
            weight_decay=self.weight_decay, eps=self.eps, alpha=self.alpha, steps=self.steps,
            grad_clip=self.grad_clip, train_examples=self.train_examples, eval_examples=self.eval_examples,
            val_examples=self.val_examples, seed=seed,
        )

    def model_overrides(self, arch: str) -> dict[str, Any]:
        """The preset overrides for `arch`: the shared ones, then its own on top."""
        shared = {key: value for key, value in self.model.items() if key not in list_models()}
        return {**shared, **self.model.get(arch, {})}

    def run_dir(self, cell: Cell) -> Path:
        return self.out / cell.name

    def examples(self, suite: str, available: int) -> int:
        """How many test images `suite` is run on: aa_examples for AutoAttack, eval_examples else."""
        wanted = self.aa_examples if get_suite_spec(suite).uses_autoattack else self.eval_examples
        return available if wanted is None else min(wanted, available)


def _check_overrides(table: str, overrides: dict[str, Any]) -> None:
    known = {f.name for f in dataclasses.fields(ModelConfig)} - _FIXED_MODEL_FIELDS
    bad = sorted(set(overrides) - known)
    if bad:
        raise UsageError(f"{table} may set {', '.join(sorted(known))} (or hold [study.model.ARCH] tables); not {', '.join(bad)}")
    try:
        check_values(overrides)
    except ZooError as exc:
        raise UsageError(f"{table}: {exc}") from None


# -- reading a study file ---------------------------------------------------------------------------

_STUDY_KEYS = {f.name for f in dataclasses.fields(StudyConfig)} - {"grids"}
_GRID_KEYS = {f.name for f in dataclasses.fields(Grid)}


def load_study(path: str | Path) -> StudyConfig:
    """Read a study TOML file; unknown keys and bad values are a UsageError naming the file.

    Relative `out` and `leaderboard` paths are kept as written: they are relative to the working
    directory, like every path the CLI takes. eps and alpha may be fractions: "8/255".
    """
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            document = tomllib.load(handle)
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the study file ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path}: not valid TOML ({exc})") from None
    try:
        return _parse(document)
    except UsageError as exc:
        raise UsageError(f"{path}: {exc}") from None


def _parse(document: dict[str, Any]) -> StudyConfig:
    extra = sorted(set(document) - {"study", "grid"})
    if extra:
        raise UsageError(f"unknown top-level table(s) {', '.join(extra)}; a study has [study] and [[grid]]")
    settings = dict(document.get("study", {}))
    unknown = sorted(set(settings) - _STUDY_KEYS)
    if unknown:
        raise UsageError(f"unknown [study] key(s) {', '.join(unknown)}; valid: {', '.join(sorted(_STUDY_KEYS))}")
    for key in ("eps", "alpha"):
        if key in settings:
            settings[key] = _number(settings[key], key)
    for key in ("out", "leaderboard"):
        if key in settings:
            settings[key] = Path(settings[key])
    for key in ("suites", "seeds"):
        if key in settings:
            if not isinstance(settings[key], list):
                example = "[0, 1, 2]" if key == "seeds" else '["pgd10"]'
                raise UsageError(f"{key} must be a list, e.g. {key} = {example}")
            settings[key] = tuple(settings[key])
    grids = []
    for table in document.get("grid", []):
        bad = sorted(set(table) - _GRID_KEYS)
        if bad:
            raise UsageError(f"unknown [[grid]] key(s) {', '.join(bad)}; valid: {', '.join(sorted(_GRID_KEYS))}")
        not_lists = sorted(key for key, values in table.items() if not isinstance(values, list))
        if not_lists:
            raise UsageError(f"[[grid]] values must be lists, e.g. models = [\"s4\"]; not {', '.join(not_lists)}")
        grids.append(Grid(**{key: tuple(values) for key, values in table.items()}))
    try:
        return StudyConfig(grids=tuple(grids), **settings)
    except TypeError as exc:  # a value of the wrong type where the dataclass could not even be built
        raise UsageError(str(exc)) from None


def _number(value: object, name: str) -> float:
    """8/255 written as a string, or a plain number."""
    try:
        return float(Fraction(value)) if isinstance(value, str) else float(value)  # type: ignore[arg-type]
    except (ValueError, ZeroDivisionError, TypeError, OverflowError):
        raise UsageError(f"{name} must be a number or a fraction like \"8/255\", got {value!r}") from None


# -- the grid ---------------------------------------------------------------------------------------


def expand(config: StudyConfig) -> tuple[list[Cell], list[Skipped]]:
    """The union of the grids' products (each combination once per seed) in first-seen order, and
    the combinations the zoo refuses."""
    seen: dict[Cell, None] = {}
    for grid in config.grids:
        for arch, method, ads, attention, seed in itertools.product(
            grid.models, grid.methods, grid.ads, grid.attention, config.seeds
        ):
            seen.setdefault(Cell(arch, method, ads, attention, seed))
    cells, skipped = [], []
    for cell in seen:
        try:
            make_config(cell.arch, config.dataset, cell.ads, cell.attention, **config.model_overrides(cell.arch))
        except ZooError as exc:
            skipped.append(Skipped(cell, str(exc)))
        else:
            cells.append(cell)
    return cells, skipped


def parse_shard(text: str) -> tuple[int, int]:
    """'2/3' -> (2, 3): the second of three shards (1-based)."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise UsageError(f"shard must look like i/k (e.g. 1/2), got {text!r}") from None
    if not 1 <= index <= count:
        raise UsageError(f"shard i/k needs 1 <= i <= k, got {text!r}")
    return index, count


def select(cells: Sequence[Cell], shard: tuple[int, int] | None) -> list[Cell]:
    """Shard i/k takes cells i, i+k, i+2k, ... of the whole grid (1-based).

    Sharding the grid, not the cells still pending, keeps the shards disjoint and complete
    however the runners' start times interleave with cells finishing.
    """
    if shard is None:
        return list(cells)
    index, count = shard
    return list(cells[index - 1 :: count])


# -- status -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CellStatus:
    """Where a cell stands: pending, running (another process holds it), done or failed."""

    cell: Cell
    status: str
    message: str = ""
    epochs_done: int = 0


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


def status(config: StudyConfig, cell: Cell) -> CellStatus:
    run_dir = config.run_dir(cell)
    marker = read_marker(run_dir)
    if marker is not None:
        return CellStatus(cell, marker["status"], marker.get("message", ""), marker.get("epochs", 0))
    state = RUNNING if _is_locked(run_dir) else PENDING
    return CellStatus(cell, state, epochs_done=_epochs_done(run_dir))


def plan(config: StudyConfig, shard: tuple[int, int] | None = None) -> list[CellStatus]:
    """The status of every cell this runner would consider, without running anything."""
    cells, _ = expand(config)
    return [status(config, cell) for cell in select(cells, shard)]


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
    fd = os.open(run_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


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
    target = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cells, skipped = expand(config)
    selected = select(cells, shard)
    observer.on_study_start([status(config, cell) for cell in selected], skipped)
    loaded: _Data | None = None  # only a runner with work to do reads the data
    outcomes = []
    for index, cell in enumerate(selected, start=1):
        marker = read_marker(config.run_dir(cell))
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
        _write_marker(run_dir, {"status": DONE, "cell": cell.name, "run_id": rows[0].run_id, "rows": len(rows),
                                "epochs": epochs, "seconds": seconds})
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
    for suite in config.suites:
        n = config.examples(suite, len(images))

        def progress(done: int, total: int, attack: str, suite: str = suite) -> None:
            observer.on_eval(cell, kind, suite, done, total, attack)

        try:
            results.append(evaluate(
                model, images, labels, suite, config.eps, n, config.eval_batch_size, device, config.backend,
                cell.seed, progress, version=config.aa_version, checks=CheckConfig() if config.checks else None,
                state_path=path.parent / f"eval-{kind}-{suite}.json",
            ))
        except RunError:
            raise
        except RuntimeError as exc:  # a torch failure inside an attack (e.g. out of memory) fails the cell
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise RunError(f"{path}: {suite} evaluation failed: {reason}") from exc
    return _Evaluated(path, meta, sha256, weights, tuple(results))


def _run_id(config: StudyConfig, cell: Cell, hashes: list[str]) -> str:
    """Stable for one cell's checkpoints and evaluation settings, so a rerun never records twice."""
    key = json.dumps({"cell": cell.name, "checkpoints": hashes, "suites": config.suites, "eps": config.eps,
                      "eval": config.eval_examples, "aa": config.aa_examples, "backend": config.backend,
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


# -- the study's table ------------------------------------------------------------------------------


def study_rows(config: StudyConfig) -> list[ResultRow]:
    """The leaderboard rows that this study's finished cells recorded."""
    cells, _ = expand(config)
    run_ids = set()
    for cell in cells:
        marker = read_marker(config.run_dir(cell))
        if marker is not None and marker["status"] == DONE:
            run_ids.add(marker["run_id"])
    if not run_ids or not config.leaderboard.is_file():
        return []
    return [row for row in read(config.leaderboard) if row.run_id in run_ids]


def caption(config: StudyConfig) -> str:
    """What the numbers were measured with: training budget, model, and every evaluation subset."""
    freeat = config.train_config("freeat", config.seeds[0])
    train_set = f"the first {config.train_examples} training images" if config.train_examples else "the whole training split"
    eval_set = f"the first {config.eval_examples} test images" if config.eval_examples else "the whole test split"
    model = f"the {config.dataset} preset" + _overrides_text(config.model)
    selection_set = f"{config.val_examples} held-out training images (not trained on)" if config.val_examples else eval_set
    suites = []
    for suite in config.suites:
        if get_suite_spec(suite).uses_autoattack:
            suites.append(f"{suite} ({config.aa_version}, {config.backend} code) on the first {config.aa_examples} test images")
        else:
            suites.append(f"{suite} on {eval_set}")
    return (
        f"Trained {_count(config.epochs, 'epoch')} (FreeAT {_count(freeat.effective_epochs, 'epoch')} x {freeat.freeat_m} replays) on {train_set}, "
        f"batch {config.batch_size}, AdamW lr {config.lr:g} (cosine), weight decay {config.weight_decay:g}, "
        f"{_count(len(config.seeds), 'seed')} ({', '.join(map(str, config.seeds))}); model: {model}. "
        f"Best = the epoch with the highest PGD-10 accuracy on {selection_set}. Evaluated: {'; '.join(suites)}. "
        + ("Sanity checks on every evaluation." if config.checks else "Sanity checks off (checks = false): the rows say not checked.")
    )


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _overrides_text(model: dict[str, Any]) -> str:
    """' with d_model = 64 (mamba: d_state = 16)' for the caption; '' without overrides."""
    shared = ", ".join(f"{key} = {value}" for key, value in sorted(model.items()) if key not in list_models())
    own = "; ".join(f"{arch}: {', '.join(f'{k} = {v}' for k, v in sorted(model[arch].items()))}"
                    for arch in sorted(set(model) & set(list_models())))
    text = f" with {shared}" if shared else ""
    return text + (f" ({own})" if own else "")


def render_study(config: StudyConfig) -> str:
    """Markdown: the caption, the paper-style table of the finished cells, then what is not done."""
    # The leaderboard's preamble explains the columns for the published file; the study has its own caption.
    tables = render_markdown(study_rows(config)).removeprefix(PREAMBLE).strip()
    legend = ("Accuracies in % with their 95% Wilson intervals; ≈: not significantly different from the line "
              "above (exact McNemar on per-example outcomes, else Fisher's exact test on the counts).")
    parts = [f"# Study: {config.title} ({config.dataset})", "", caption(config), legend, "", tables, ""]
    cells, skipped = expand(config)
    unfinished = [s for s in (status(config, cell) for cell in cells) if s.status != DONE]
    if unfinished:
        parts += ["## Not finished", ""]
        parts += [f"- {s.cell.name}: {s.status}{f' ({s.message})' if s.message else ''}" for s in unfinished]
        parts.append("")
    if skipped:
        parts += ["## Skipped combinations", ""]
        parts += [f"- {s.cell.name}: {s.reason}" for s in skipped]
        parts.append("")
    return "\n".join(parts)
