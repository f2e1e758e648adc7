"""L2 adversarial training: PGD-AT, TRADES and MART attack in the L2 ball (normalized-gradient
steps, rescaling projection), the methods without an L2 maximization are refused, the step size
follows RobustBench's convention, the Linf defaults are unchanged, and the checkpoint records L2."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from model_zoo import build_model
from model_zoo.checkpoints import read_meta
from model_zoo.errors import UsageError
from model_zoo.training import ThreatModel, TrainConfig
from model_zoo.training.methods import MethodContext, get_method, kl_to_clean
from ssmbench.cli import main
from ssmbench.data import load_split

EPS, STEPS = 0.5, 4


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = load_split("digits", "train")
    return images[:48], labels[:48]


def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("s4d", "digits", d_model=16, d_state=8, n_layers=1).train()


def l2_context(model: torch.nn.Module, method: str, seed: int = 0) -> MethodContext:
    config = TrainConfig.from_settings(method=method, norm="l2", eps=EPS, steps=STEPS)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    return MethodContext(optimizer, config.method_params, config.threat, generator=torch.Generator().manual_seed(seed))


def reference_l2_pgd(model: torch.nn.Module, x: torch.Tensor, start: torch.Tensor, target: torch.Tensor, loss_fn, alpha: float) -> torch.Tensor:
    """Steepest ascent in L2 written from the definition: step alpha along g / ||g||, then scale
    delta back onto the ball with torch.renorm and clamp to [0, 1] (an independent reference)."""
    x_adv = start.clone()
    for _ in range(STEPS):
        x_adv.requires_grad_(True)
        (grad,) = torch.autograd.grad(loss_fn(model(x_adv), target), x_adv)
        norms = grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
        delta = (x_adv.detach() + alpha * grad / norms) - x
        delta = torch.renorm(delta, p=2, dim=0, maxnorm=EPS)
        x_adv = (x + delta).clamp(0, 1)
    return x_adv.detach()


def assert_same_attack(got: torch.Tensor, expected: torch.Tensor) -> None:
    """Equal up to float32 rounding: torch.renorm divides by norm + 1e-7 where the projection adds
    1e-12, which moves a pixel sitting on the [0, 1] clamp by ~1e-4 in a few of thousands."""
    difference = (got - expected).abs()
    assert difference.max() < 1e-3 and (difference > 1e-5).float().mean() < 0.01


def test_l2_step_is_robustbench_convention_and_linf_default_is_unchanged() -> None:
    assert ThreatModel(norm="l2", eps=EPS, steps=STEPS).alpha == pytest.approx(2.5 * EPS / STEPS)
    assert ThreatModel().alpha == 2 / 255 and ThreatModel(eps=4 / 255).alpha == 2 / 255  # Linf: the paper's fixed step
    assert ThreatModel(norm="l2", eps=EPS, alpha=0.01).alpha == 0.01
    flat = TrainConfig.from_settings(method="pgd", norm="l2", eps=EPS).to_dict()
    assert flat["threat_model"] == "L2" and "norm" not in flat  # the flat form keeps its keys
    assert TrainConfig.from_dict(flat).threat.norm == "l2"
    assert TrainConfig().to_dict()["threat_model"] == "Linf"


@pytest.mark.parametrize("method", ["fgsm-rs", "freeat", "yopo"])
def test_methods_without_an_l2_maximization_are_refused(method: str) -> None:
    with pytest.raises(UsageError, match=f"{method} trains against linf only; for l2 use st, pgd, trades, mart"):
        TrainConfig.from_settings(method=method, norm="l2", eps=EPS)


@pytest.mark.parametrize("method", ["pgd", "trades", "mart"])
def test_l2_methods_train_inside_the_l2_ball(method: str, digits: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = digits
    out = get_method(method)(tiny_model(), x, y, l2_context(tiny_model(), method))
    delta = (out.x_adv - x).flatten(1)
    assert (delta.norm(dim=1) <= EPS + 1e-5).all() and out.x_adv.min() >= 0 and out.x_adv.max() <= 1
    assert (delta.norm(dim=1) > 0.9 * EPS).float().mean() > 0.5  # it does move to the sphere, unlike an Linf-sized step
    assert delta.abs().max() > 8 / 255  # an L2 ball of 0.5 allows single pixels far beyond the Linf 8/255


def test_trades_l2_maximization_equals_the_reference(digits: tuple[torch.Tensor, torch.Tensor]) -> None:
    """TRADES' inner loop in L2 against the from-definition reference from the same start."""
    x, y = digits
    model = tiny_model()
    ctx = l2_context(model, "trades", seed=3)
    out = get_method("trades")(model, x, y, ctx)
    reference = tiny_model()  # the weights before the update
    start = x + 0.001 * torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        clean = reference(x)
    expected = reference_l2_pgd(reference, x, start, clean, kl_to_clean, ctx.threat.step_size)
    assert_same_attack(out.x_adv, expected)


def test_pgd_at_l2_maximization_equals_the_reference(digits: tuple[torch.Tensor, torch.Tensor]) -> None:
    """PGD-AT's L2 attack from its own random start (a Gaussian direction, radius U(0, eps))."""
    from model_zoo.training.perturb import l2_start

    x, y = digits
    model = tiny_model()
    ctx = l2_context(model, "pgd", seed=5)
    out = get_method("pgd")(model, x, y, ctx)
    reference = tiny_model()
    start = l2_start(x, EPS, torch.Generator().manual_seed(5))
    expected = reference_l2_pgd(reference, x, start, y, F.cross_entropy, ctx.threat.step_size)
    assert_same_attack(out.x_adv, expected)


def test_train_cli_l2_records_the_threat_model(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert main(["train", "s4d", "--at", "pgd", "--norm", "l2", "--eps", "1/2", "--epochs", "1", "--train-examples", "32",
                 "--eval-examples", "16", "--batch-size", "16", "--out", str(out)]) == 0
    meta = read_meta(out / "last.safetensors")[0]
    assert meta.training["threat_model"] == "L2" and meta.training["eps"] == 0.5 and meta.training["alpha"] == pytest.approx(2.5 * 0.5 / 10)
    assert TrainConfig.from_metadata(meta.training).threat.norm == "l2"
    assert main(["train", "s4d", "--at", "freeat", "--norm", "l2", "--out", str(tmp_path / "refused")]) == 2
