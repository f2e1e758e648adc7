"""Attacks and suites: the threat model holds, PGD matches torchattacks, composition is worst case."""

from __future__ import annotations

import pytest
import torch
import torchattacks
from torch import nn

from model_zoo.errors import UsageError
from ssmbench.attacks import FGSM, PGD, AttackSettings, Suite, autoattack, build_suite, get_suite_spec, predict

EPS = 8 / 255


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return (predict(model, x) == y).float().mean().item()


@pytest.mark.parametrize("attack", [PGD(EPS, steps=10), PGD(EPS, steps=5, restarts=3, seed=1), FGSM(EPS)], ids=["pgd", "pgd-restarts", "fgsm"])
def test_attacks_stay_in_the_eps_ball_and_the_image_box(model, test_set, attack) -> None:
    x, y = test_set
    result = attack(model, x, y)
    assert (result.x_adv - x).abs().max().item() <= EPS + 1e-6
    assert result.x_adv.min().item() >= 0.0 and result.x_adv.max().item() <= 1.0
    assert torch.equal(result.success, predict(model, result.x_adv) != y)
    assert result.success.float().mean().item() > 1 - accuracy(model, x, y)  # it found something beyond clean errors


@pytest.mark.parametrize("backend", ["official", "torchattacks"])
def test_square_from_each_backend_stays_in_the_ball(model, test_set, backend) -> None:
    x, y = test_set[0][:16], test_set[1][:16]
    square = autoattack.square(AttackSettings(EPS, backend=backend), n_queries=200)
    result = square(model, x, y)
    assert square.black_box
    assert (result.x_adv - x).abs().max().item() <= EPS + 1e-6
    assert result.x_adv.min().item() >= 0.0 and result.x_adv.max().item() <= 1.0
    assert torch.equal(result.success, predict(model, result.x_adv) != y)


def test_pgd_agrees_with_torchattacks_pgd(model, test_set) -> None:
    """Same eps, alpha, steps and one uniform random start: the robust accuracies agree within 1 point."""
    x, y = test_set
    ours = 1 - PGD(EPS, steps=10, alpha=EPS / 4)(model, x, y).success.float().mean().item()
    torch.manual_seed(0)
    reference = torchattacks.PGD(model, eps=EPS, alpha=EPS / 4, steps=10, random_start=True)(x, y)
    theirs = accuracy(model, reference, y)
    assert 0.2 < theirs < accuracy(model, x, y) - 0.1  # a model neither trivially robust nor broken
    assert abs(ours - theirs) <= 0.01


class CountingModel(nn.Module):
    """Counts forward passes with and without a graph (attack steps vs predictions)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.calls = {"grad": 0, "no_grad": 0}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls["grad" if torch.is_grad_enabled() else "no_grad"] += 1
        return self.model(x)


@pytest.mark.parametrize("restarts", [1, 3])
def test_pgd_costs_steps_gradient_passes_per_restart_and_one_prediction(model, test_set, restarts) -> None:
    """PGD-10 is 10 forward+backward passes and the one forward that decides success, like
    torchattacks.PGD: a restart loop that also predicts after its last restart costs ~3% more."""
    x, y = test_set
    counting = CountingModel(model)
    eps = 1.0  # every restart fools everything left, so restarts after the first have nothing to do
    PGD(eps, steps=10, restarts=restarts)(counting, x, y)
    assert counting.calls == {"grad": 10, "no_grad": 1 + (restarts > 1)}


def test_eps_zero_gives_clean_accuracy_exactly(model, test_set) -> None:
    x, y = test_set
    result = build_suite("pgd10", AttackSettings(0.0)).run(model, x, y)
    assert torch.equal(result.robust, predict(model, x) == y)
    assert torch.equal(result.x_adv, x)
    assert result.robust_acc == result.clean_acc


def test_restarts_keep_the_first_success_so_they_only_add(model, test_set) -> None:
    x, y = test_set
    one = PGD(EPS, steps=3, seed=5)(model, x, y).success
    three = PGD(EPS, steps=3, restarts=3, seed=5)(model, x, y).success
    assert bool((three | ~one).all())  # every example fooled by restart 1 stays fooled
    assert int(three.sum()) >= int(one.sum())


def test_suite_runs_each_attack_on_survivors_and_reports_worst_case(model, test_set) -> None:
    x, y = test_set
    fgsm, pgd = FGSM(EPS), PGD(EPS, steps=10)
    result = Suite("two", (fgsm, pgd)).run(model, x, y)
    clean = predict(model, x) == y
    assert torch.equal(result.clean, clean)
    # FGSM is deterministic per example, so on the survivors it decides exactly what it decides alone.
    assert torch.equal(result.robust_after["fgsm"], clean & ~fgsm(model, x, y).success)
    assert bool((result.robust <= result.robust_after["fgsm"]).all())
    assert list(result.per_attack) == ["fgsm", "pgd"]
    assert result.per_attack["pgd"] <= result.per_attack["fgsm"] <= result.clean_acc
    assert result.robust_acc == result.per_attack["pgd"]
    assert torch.equal(predict(model, result.x_adv) == y, result.robust)


def test_all_suite_is_pgd10_then_autoattack_parts() -> None:
    suite = build_suite("all", AttackSettings(EPS, backend="torchattacks", version="standard"))
    assert [a.name for a in suite.attacks] == ["pgd10", "apgd-ce", "apgd-t", "fab-t", "square"]
    assert [a.black_box for a in suite.attacks] == [False, False, False, False, True]
    plus = build_suite("autoattack", AttackSettings(EPS, version="plus"))
    assert [a.name for a in plus.attacks] == ["apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"]


@pytest.mark.parametrize(
    "make",
    [
        lambda: build_suite("pgd100", AttackSettings(EPS)),
        lambda: get_suite_spec("cw"),
        lambda: PGD(EPS, restarts=0),
        lambda: AttackSettings(EPS, backend="foolbox"),
        lambda: AttackSettings(EPS, version="fast"),
        lambda: AttackSettings(1.5),
        lambda: PGD(EPS, steps=0),
    ],
)
def test_bad_names_and_values_are_usage_errors(make) -> None:
    with pytest.raises(UsageError):
        make()
