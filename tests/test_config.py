"""One source of truth for every setting: TrainConfig composes the threat model, the optimization and
each method's own parameters; its flat form is exactly the metadata that checkpoints carried before
the refactor, the shipped checkpoints give the same logits, and a method sees only its parameters."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from model_zoo import checkpoints
from model_zoo.errors import UsageError
from model_zoo.registries import Registry
from model_zoo.training import METHODS, FreeATParams, MethodParams, ThreatModel, TradesParams, TrainConfig, get_method
from model_zoo.training.config import flat_keys

FIXTURES = Path(__file__).parent / "fixtures"
sys.path.insert(0, str(FIXTURES))
import make_reference_logits  # noqa: E402
import make_reference_metadata  # noqa: E402

REFERENCE = json.loads((FIXTURES / "reference_training_metadata.json").read_text())
WEIGHTS = sorted(make_reference_logits.WEIGHTS.glob("*.safetensors"))


@pytest.mark.parametrize("path", WEIGHTS, ids=lambda p: p.stem)
def test_shipped_checkpoints_give_the_logits_they_gave_before_the_refactor(path: Path) -> None:
    reference = np.load(FIXTURES / "reference_logits.npz")[path.stem]
    model, meta = checkpoints.load(path)
    with torch.no_grad():
        logits = model(make_reference_logits.reference_inputs(tuple(meta.config.input_shape))).numpy()
    np.testing.assert_allclose(logits, reference, rtol=1e-5, atol=1e-5)


def test_every_shipped_checkpoint_has_a_reference() -> None:
    assert {p.stem for p in WEIGHTS} == set(np.load(FIXTURES / "reference_logits.npz").files)


def test_tiny_runs_write_the_metadata_and_metrics_of_the_code_before_the_refactor(tmp_path: Path) -> None:
    """One 1-epoch run per method, every method parameter away from its default: the `training`
    metadata is key for key and value for value what the old TrainConfig wrote, and the metrics
    (what the run trained to) are the same up to float noise."""
    found = make_reference_metadata.run_metadata(lambda settings: TrainConfig.from_settings(**settings), tmp_path)
    assert found.keys() == REFERENCE.keys()
    for name, reference in REFERENCE.items():
        assert found[name]["training"] == reference["training"], name
        assert found[name]["metrics"] == pytest.approx(reference["metrics"], rel=1e-4), name


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_a_config_round_trips_through_its_metadata(name: str) -> None:
    training = REFERENCE[name]["training"]
    config = TrainConfig.from_metadata(training)
    assert config.method == name
    flat = config.to_dict()
    assert flat == {key: training[key] for key in flat}
    assert TrainConfig.from_dict(flat) == config


@pytest.mark.parametrize("path", WEIGHTS, ids=lambda p: p.stem)
def test_shipped_checkpoints_metadata_reads_back_as_a_config(path: Path) -> None:
    """Written before val_examples existed: the missing settings take their defaults."""
    training = checkpoints.read_meta(path)[0].training
    flat = TrainConfig.from_metadata(training).to_dict()
    assert {key: flat[key] for key in training if key in flat} == {key: training[key] for key in training if key in flat}


def test_the_flat_form_names_each_method_parameter_once() -> None:
    params = {key for key in flat_keys() if key.split("_")[0] in {"trades", "mart", "freeat", "yopo"}}
    assert params == {"trades_beta", "mart_beta", "freeat_m", "freeat_full_epochs", "yopo_m", "yopo_n"}


def test_a_method_gets_only_its_own_parameters() -> None:
    assert TrainConfig(method="trades").params == TradesParams()
    assert TrainConfig(method="pgd").params == MethodParams()
    assert TrainConfig.from_settings(method="freeat", freeat_m=2, trades_beta=1.0).params == FreeATParams(m=2)
    with pytest.raises(UsageError, match="takes FreeATParams, not TradesParams"):
        TrainConfig(method="freeat", params=TradesParams(beta=1.0))
    assert {name: spec.params.__name__ for name, spec in METHODS.items()} == {
        "st": "MethodParams", "pgd": "MethodParams", "trades": "TradesParams", "mart": "MartParams",
        "fgsm-rs": "MethodParams", "freeat": "FreeATParams", "yopo": "YopoParams"}


def test_trades_beta_reaches_the_loss() -> None:
    """The loss is CE + beta * KL: two betas give losses whose difference is (beta1 - beta2) * KL > 0."""
    from model_zoo import build_model
    from model_zoo.training import MethodContext

    losses = {}
    for beta in (0.0, 6.0):
        torch.manual_seed(0)
        model = build_model("s4d", "digits", d_model=8, d_state=4, n_layers=1).train()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
        x, y = torch.rand(8, 1, 8, 8), torch.arange(8)
        ctx = MethodContext(optimizer, TradesParams(beta=beta), ThreatModel(eps=0.1, alpha=0.03, steps=2),
                            generator=torch.Generator().manual_seed(0))
        losses[beta] = get_method("trades")(model, x, y, ctx).loss.item()
    assert losses[6.0] > losses[0.0] + 1e-6


@pytest.mark.parametrize(
    ("settings", "message"),
    [({"norm": "l3"}, "norm must be one of linf"), ({"eps": -0.1}, "eps must be >= 0"), ({"eps": 2.0}, "eps must be <= 1"),
     ({"steps": 0}, "steps must be > 0"), ({"alpha": float("nan")}, "alpha must be a finite number")],
)
def test_threat_model_refuses_bad_values(settings: dict[str, object], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        ThreatModel(**settings)


@pytest.mark.parametrize(
    ("settings", "message"),
    [({"method": "freeat", "freeat_m": 0}, "m must be >= 1"), ({"method": "trades", "trades_beta": -1.0}, "beta must be >= 0"),
     ({"lr": 0.0}, "lr must be > 0"), ({"optimizer": "sgd"}, "optimizer must be one of AdamW"),
     ({"learning_rate": 0.1}, "unknown training setting"), ({"method": "fgsm"}, "unknown training method 'fgsm'; choose one of st, ")],
)
def test_flat_settings_refuse_bad_values_in_one_line(settings: dict[str, object], message: str) -> None:
    with pytest.raises(UsageError, match=message) as info:
        TrainConfig.from_settings(**settings)
    assert "\n" not in str(info.value)


def test_registry_registers_gets_and_lists() -> None:
    registry: Registry[int] = Registry("widget")
    registry.register("b", lambda fn: 2)(len)
    registry.add("a", 1)
    assert registry.names() == ["b", "a"] and registry.get("a") == 1 and "b" in registry and len(registry) == 2
    with pytest.raises(UsageError, match=r"^unknown widget 'c'; choose one of b, a$"):
        registry.get("c")
    with pytest.raises(UsageError, match="widget 'a' registered twice"):
        registry.add("a", 3)
