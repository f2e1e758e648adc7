"""A study's settings: the StudyConfig dataclass, its grids, and reading and validating the TOML file."""



from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

from model_zoo.ads import ADS_CHOICES
from model_zoo.config import ModelConfig, check_values
from model_zoo.datasets import DEFAULT_DATASET
from model_zoo.errors import UsageError, ZooError
from model_zoo.limits import SEED_RANGE
from model_zoo.registry import list_models
from model_zoo.training import METHODS, MethodParams, TrainConfig, list_methods
from model_zoo.training.config import flat_keys
from ssmbench import data
from ssmbench.attacks import AUTOATTACK_VERSIONS, BACKENDS, get_suite_spec
from ssmbench.home import user_results
from ssmbench.protocol import AUTOATTACK_EXAMPLES  # the paper's protocol, declared once

if TYPE_CHECKING:  # a cell names its run directory; the grid module builds cells from a config
    from ssmbench.study.grid import Cell


# ModelConfig fields that the dataset or the grid decide; [study.model] cannot override them.
_FIXED_MODEL_FIELDS = {"arch", "dataset", "ads", "attention", "channels", "height", "width", "classes", "input_kind"}


@dataclass(frozen=True)
class Grid:
    """One cartesian product of cells: every model x method x AdS x attention x seed.

    seeds: this grid's seeds; left out = the study's (an empty list is refused). A protocol can then train its headline cells
    with three seeds and the rest of the grid with one, in one file. suites: this grid's attack
    suites; left out = the study's. AutoAttack at L = 784 costs ~3000 CPU s per robust checkpoint on
    200 images, so a study on a CPU can afford it on its headline cells only.
    """

    models: tuple[str, ...]
    methods: tuple[str, ...]
    ads: tuple[str, ...] = ("none",)
    attention: tuple[bool, ...] = (False,)
    seeds: tuple[int, ...] = ()
    suites: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        names = (("models", self.models, list_models()), ("methods", self.methods, list_methods()),
                 ("ads", self.ads, list(ADS_CHOICES)))
        for option, values, known in names:
            unknown = [str(v) for v in values if v not in known]
            if unknown or not values:
                raise UsageError(f"grid {option}: unknown or missing {', '.join(unknown)}; choose from {', '.join(known)}")
        if not self.attention or not all(isinstance(v, bool) for v in self.attention):
            raise UsageError(f"grid attention must list true and/or false, got {list(self.attention)}")
        if self.seeds:
            check_seeds("grid seeds", self.seeds)
        for suite in self.suites:
            get_suite_spec(suite)


def check_seeds(option: str, seeds: tuple[int, ...]) -> None:
    """Distinct integers in the zoo's seed range, at least one."""
    if not seeds or len(set(seeds)) != len(seeds) or not all(
        isinstance(seed, int) and not isinstance(seed, bool) and SEED_RANGE[0] <= seed <= SEED_RANGE[1] for seed in seeds
    ):
        raise UsageError(f"{option} must list distinct integers in [{SEED_RANGE[0]}, {SEED_RANGE[1]}], e.g. [0, 1, 2]; got {list(seeds)}")


@dataclass(frozen=True)
class StudyConfig:
    """Everything a study does. Defaults are the paper's; examples count from the start of a split.

    train: every cell's training settings (TrainConfig, whose defaults `ssmbench train` shares);
    a cell sets its method and seed, `method_params` the method's own parameters (TRADES beta,
    FreeAT m, ...; a method without an entry takes its defaults), and epochs left unset are the
    dataset's paper epochs. train.eval_examples: test images for the per-epoch PGD-10 and for the
    final PGD-10 evaluation (None = the whole test split). train.val_examples: training images
    held out to select the best checkpoint by PGD-10; 0 selects on the test images instead.
    aa_examples: the first N test images for the AutoAttack suites (capped at the split). model:
    overrides of the dataset preset for every cell; a key that names an architecture holds
    overrides for that architecture only.
    """

    grids: tuple[Grid, ...]
    dataset: str = DEFAULT_DATASET
    name: str = ""
    train: TrainConfig = TrainConfig()
    method_params: dict[str, MethodParams] = field(default_factory=dict)
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
        check_seeds("seeds", self.seeds)
        for option, count in (("aa_examples", self.aa_examples), ("eval_batch_size", self.eval_batch_size)):
            if count < 1:
                raise UsageError(f"{option} must be >= 1, got {count}")
        _check_overrides("[study.model]", {k: v for k, v in self.model.items() if k not in list_models()})
        for arch in sorted(set(self.model) & set(list_models())):
            if not isinstance(self.model[arch], dict):
                raise UsageError(f"[study.model.{arch}] must be a table of overrides, got {self.model[arch]!r}")
            _check_overrides(f"[study.model.{arch}]", self.model[arch])
        for method, params in self.method_params.items():
            if type(params) is not METHODS.get(method).params:
                raise UsageError(f"[method_params.{method}] must be {METHODS.get(method).params.__name__}, got {type(params).__name__}")
        for method in dict.fromkeys(m for grid in self.grids for m in grid.methods):
            self.train_config(method, self.seeds[0])  # TrainConfig validates the numbers

    @property
    def title(self) -> str:
        return self.name or self.out.name

    def train_config(self, method: str, seed: int) -> TrainConfig:
        """The TrainConfig of the cells of `method` and `seed`, epochs resolved for the dataset."""
        config = dataclasses.replace(self.train, method=method, seed=seed, params=self.method_params.get(method))
        return config.resolved(self.dataset)

    def with_settings(self, **settings: Any) -> StudyConfig:
        """This study with some settings replaced: study fields by name, training settings by
        their flat names (epochs, lr, eps, ... as in [study])."""
        train = {key: settings.pop(key) for key in list(settings) if key in TRAIN_KEYS}
        if train:
            settings["train"] = TrainConfig.from_dict({**_train_settings(self.train), **train})
        return dataclasses.replace(self, **settings)

    def model_overrides(self, arch: str) -> dict[str, Any]:
        """The preset overrides for `arch`: the shared ones, then its own on top."""
        shared = {key: value for key, value in self.model.items() if key not in list_models()}
        return {**shared, **self.model.get(arch, {})}

    def run_dir(self, cell: Cell) -> Path:
        return self.out / cell.name

    def examples(self, suite: str, available: int) -> int:
        """How many test images `suite` is run on: aa_examples for AutoAttack, eval_examples else."""
        wanted = self.aa_examples if get_suite_spec(suite).uses_autoattack else self.train.eval_examples
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

_STUDY_KEYS = {f.name for f in dataclasses.fields(StudyConfig)} - {"grids", "train", "method_params"}
_GRID_KEYS = {f.name for f in dataclasses.fields(Grid)}
# Training settings a [study] table may set by their flat names: all but what a cell decides
# (method, seed) and the method parameters, which [method_params.METHOD] tables set.
_METHOD_PARAM_KEYS = {f"{name.replace('-', '_')}_{item.name}" for name, spec in METHODS.items()
                      for item in dataclasses.fields(spec.params)}
TRAIN_KEYS = (flat_keys() | {"norm"}) - {"method", "seed"} - _METHOD_PARAM_KEYS


def _train_settings(config: TrainConfig) -> dict[str, Any]:
    """The [study]-settable training settings of `config`, by their flat names."""
    return {key: value for key, value in config.to_dict().items() if key in TRAIN_KEYS}


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
    extra = sorted(set(document) - {"study", "grid", "method_params"})
    if extra:
        raise UsageError(f"unknown top-level table(s) {', '.join(extra)}; a study has [study], [[grid]] and [method_params.METHOD]")
    settings = dict(document.get("study", {}))
    misplaced = sorted(set(settings) & _METHOD_PARAM_KEYS)
    if misplaced:
        raise UsageError(f"[study] {misplaced[0]}: method parameters go in their method's table, e.g. [method_params.trades] beta = 6.0")
    unknown = sorted(set(settings) - _STUDY_KEYS - TRAIN_KEYS)
    if unknown:
        raise UsageError(f"unknown [study] key(s) {', '.join(unknown)}; valid: {', '.join(sorted(_STUDY_KEYS | TRAIN_KEYS))}")
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
        empty = sorted(key for key in ("seeds", "suites") if table.get(key) == [])
        if empty:  # an empty list would silently mean "the study's": say so instead of guessing
            raise UsageError(f"[[grid]] {empty[0]} = [] lists nothing; leave {empty[0]} out to use the study's, or list at least one")
        grids.append(Grid(**{key: tuple(values) for key, values in table.items()}))
    train = {key: settings.pop(key) for key in list(settings) if key in TRAIN_KEYS}
    try:
        return StudyConfig(grids=tuple(grids), train=TrainConfig.from_dict(train),
                           method_params=_method_params(document.get("method_params", {})), **settings)
    except TypeError as exc:  # a value of the wrong type where the dataclass could not even be built
        raise UsageError(str(exc)) from None


def _method_params(tables: object) -> dict[str, MethodParams]:
    """[method_params.trades] beta = 3.0 ... -> {"trades": TradesParams(beta=3.0)}."""
    if not isinstance(tables, dict) or not all(isinstance(table, dict) for table in tables.values()):
        raise UsageError("method_params must hold one table per method, e.g. [method_params.trades] beta = 6.0")
    params = {}
    for method, table in tables.items():
        spec = METHODS.get(method)
        fields = sorted(item.name for item in dataclasses.fields(spec.params))
        unknown = sorted(set(table) - set(fields))
        if unknown:
            raise UsageError(f"[method_params.{method}] has no {', '.join(unknown)}; {method} takes {', '.join(fields) or 'no parameters'}")
        params[method] = spec.params(**table)
    return params


def _number(value: object, name: str) -> float:
    """8/255 written as a string, or a plain number."""
    try:
        return float(Fraction(value)) if isinstance(value, str) else float(value)  # type: ignore[arg-type]
    except (ValueError, ZeroDivisionError, TypeError, OverflowError):
        raise UsageError(f"{name} must be a number or a fraction like \"8/255\", got {value!r}") from None
