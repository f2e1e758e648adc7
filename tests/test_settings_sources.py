"""Every setting has one source: the CLI's defaults and help are the dataclasses', train and study
resolve the same epochs for every dataset (the registry's paper epochs), a study's
[method_params] tables reach the run's checkpoint metadata, and the leaderboard prints the
method registry's display names."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
import typer.main

from model_zoo.checkpoints import read_meta
from model_zoo.datasets import list_datasets, paper_epochs
from model_zoo.labels import method_label
from model_zoo.training import METHODS, TrainConfig
from model_zoo.training.config import flat_keys
from ssmbench.cli import app, main
from ssmbench.study import Grid, StudyConfig, load_study

# CLI option -> the flat setting it feeds (the same name unless listed).
RENAMED = {"at": "method"}
FRACTIONS = {"eps", "alpha"}


def cli_params(command: str) -> dict[str, Any]:
    """The Click parameters of a command, by name (Typer vendors Click: no public type to name)."""
    group = typer.main.get_command(app)
    return {param.name: param for param in group.commands[command].params if param.name}  # type: ignore[attr-defined]


def test_train_cli_defaults_are_the_dataclass_defaults() -> None:
    """For every method, the flat settings the CLI would build from its defaults are exactly
    TrainConfig's defaults: change a default in a dataclass and this still holds; write a literal
    default into cli/train.py that differs and it fails."""
    params = cli_params("train")
    settings = {RENAMED.get(name, name): param.default for name, param in params.items() if RENAMED.get(name, name) in flat_keys()}
    assert set(settings) == flat_keys() - {"optimizer", "schedule"}  # one optimizer and one schedule: no options yet
    for name in FRACTIONS:
        settings[name] = None if settings[name] is None else float(Fraction(settings[name]))
    for method in METHODS:
        defaults = TrainConfig(method=method).to_dict()
        built = TrainConfig.from_settings(**{**settings, "method": method}).to_dict()
        assert built == defaults, method
    assert TrainConfig.from_settings(**settings).method == TrainConfig.method


def test_train_cli_help_is_the_dataclass_help() -> None:
    from model_zoo.training import FreeATParams, ThreatModel, TradesParams
    from model_zoo.training.settings import help_text

    params = cli_params("train")
    assert params["trades_beta"].help == help_text(TradesParams, "beta")
    assert params["freeat_m"].help == help_text(FreeATParams, "m")
    assert params["eps"].help == help_text(ThreatModel, "eps")
    assert params["epochs"].help == help_text(TrainConfig, "epochs")


@pytest.mark.parametrize("dataset", list_datasets())
def test_train_and_study_resolve_the_same_epochs(dataset: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """`ssmbench train --dataset D` without --epochs and a study on D without epochs train the
    dataset's paper epochs (DESIGN.md: 180 on CIFAR-10 / Tiny-ImageNet, 100 on MNIST-like data).
    The train command is stopped where its config is complete, before it loads any data."""
    from ssmbench.cli import train as train_cli

    built: list[TrainConfig] = []
    original = TrainConfig.resolved

    def keep(self: TrainConfig, name: str) -> TrainConfig:
        built.append(original(self, name))
        return built[-1]

    monkeypatch.setattr(TrainConfig, "resolved", keep)
    monkeypatch.setattr(train_cli.distributed, "process_group", lambda device: (_ for _ in ()).throw(SystemExit(0)))
    assert main(["train", "s4d", "--dataset", dataset, "--out", str(tmp_path / "run")]) == 0
    assert len(built) == 1
    study = StudyConfig(grids=(Grid(models=("s4d",), methods=("pgd",)),), dataset=dataset)
    expected = 180 if dataset in ("cifar10", "tiny-imagenet") else 100
    assert paper_epochs(dataset) == expected
    assert built[0].epochs == study.train_config("pgd", 0).epochs == expected


STUDY = """
[study]
epochs = 1
batch_size = 16
train_examples = 32
eval_examples = 8
suites = ["pgd10"]
checks = false
out = "{out}"
leaderboard = "{leaderboard}"

[study.model]
n_layers = 1
d_model = 8
d_state = 4

[method_params.trades]
beta = 3.0

[method_params.freeat]
m = 2
full_epochs = true

[[grid]]
models = ["s4d"]
methods = ["trades", "freeat"]
"""


def test_a_study_sets_method_parameters_and_the_checkpoints_record_them(tmp_path: Path) -> None:
    path = tmp_path / "study.toml"
    path.write_text(STUDY.format(out=tmp_path / "runs", leaderboard=tmp_path / "results.parquet"))
    config = load_study(path)
    assert config.train_config("trades", 0).to_dict()["trades_beta"] == 3.0
    assert main(["study", "--config", str(path)]) == 0
    trades = read_meta(tmp_path / "runs" / "s4d-trades-none" / "last.safetensors")[0].training
    freeat = read_meta(tmp_path / "runs" / "s4d-freeat-none" / "last.safetensors")[0].training
    assert (trades["trades_beta"], trades["freeat_m"]) == (3.0, 4)  # freeat's m is not trades' business
    assert (freeat["freeat_m"], freeat["freeat_full_epochs"], freeat["trades_beta"]) == (2, True, 6.0)


@pytest.mark.parametrize(
    ("table", "message"),
    [("[method_params.trades]\nalpha = 1.0", r"\[method_params.trades\] has no alpha; trades takes beta"),
     ("[method_params.pgd]\nbeta = 1.0", "pgd takes no parameters"),
     ("[method_params.nope]\nbeta = 1.0", "unknown training method 'nope'"),
     ("[method_params.freeat]\nm = 0", "m must be >= 1")],
)
def test_bad_method_parameters_are_one_line(table: str, message: str, tmp_path: Path) -> None:
    path = tmp_path / "study.toml"
    path.write_text(f'[study]\nepochs = 1\n\n{table}\n\n[[grid]]\nmodels = ["s4d"]\nmethods = ["pgd"]\n')
    from model_zoo.errors import UsageError

    with pytest.raises(UsageError, match=message):
        load_study(path)


def test_a_method_parameter_in_the_study_table_points_to_method_params(tmp_path: Path) -> None:
    from model_zoo.errors import UsageError

    path = tmp_path / "study.toml"
    path.write_text('[study]\ntrades_beta = 3.0\n\n[[grid]]\nmodels = ["s4d"]\nmethods = ["trades"]\n')
    with pytest.raises(UsageError, match=r"\[method_params.trades\] beta"):
        load_study(path)


def test_method_labels_come_from_the_method_registry() -> None:
    assert {name: method_label(name) for name in METHODS} == {name: spec.display for name, spec in METHODS.items()}
    assert method_label("pgd") == "PGD-AT" and method_label("unregistered") == "unregistered"


LEADERBOARDS = sorted((Path(__file__).resolve().parent.parent / "leaderboards").glob("*.parquet"))


@pytest.mark.parametrize("results", LEADERBOARDS, ids=lambda p: p.stem)
def test_committed_leaderboards_render_to_their_committed_markdown(results: Path) -> None:
    """Byte for byte (what ci/check_leaderboard.sh checks): the method names now come from the
    method registry, and the published tables must not change by a character."""
    from ssmbench import leaderboard

    assert leaderboard.markdown_is_fresh(results, leaderboard.markdown_for(results))


def test_the_leaderboards_are_there_to_render() -> None:
    assert {p.stem for p in LEADERBOARDS} >= {"results"}


def test_eval_cli_defaults_are_the_eval_settings_defaults() -> None:
    """`ssmbench eval`'s threat-model and suite options default to EvalSettings' fields, the
    defaults `evaluate()` and `ssmbench.benchmark` use, with the same help text."""
    from model_zoo.training.settings import help_text
    from ssmbench.evaluate import EvalSettings

    params = cli_params("eval")
    defaults = EvalSettings()
    assert float(Fraction(params["eps"].default)) == defaults.eps
    for name in ("norm", "backend", "batch_size", "version", "seed"):
        assert params[name].default == getattr(defaults, name), name
        assert params[name].help == help_text(EvalSettings, name), name


@pytest.mark.parametrize(("command", "names"), [("analyze", ["eps"]), ("bound", ["eps"]), ("transfer", ["eps", "batch_size"]), ("curve", ["batch_size"])])
def test_other_commands_take_the_evaluation_defaults(command: str, names: list[str]) -> None:
    from ssmbench.evaluate import EvalSettings

    params, defaults = cli_params(command), EvalSettings()
    for name in names:
        value = params[name].default
        assert (float(Fraction(value)) if name == "eps" else value) == getattr(defaults, name), (command, name)
