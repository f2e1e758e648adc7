"""Sanity checks: a model built to mask gradients is flagged, a plain one is not, and each
criterion triggers exactly at its documented threshold."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from model_zoo.errors import UsageError
from ssmbench.attacks import PGD, AttackSettings
from ssmbench.attacks.autoattack import AutoAttackPart
from ssmbench.checks import (
    FLAGS,
    CheckConfig,
    check_black_box_in_suite,
    check_gradients,
    check_pgd_margin,
    check_pgd_steps,
    check_randomness,
    margin_loss,
)
from ssmbench.evaluate import EvalSettings, evaluate

EPS = 8 / 255


class Quantized(nn.Module):
    """Straight 8-bit quantization in front of a model: same predictions, zero input gradients."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(torch.round(x * 255) / 255)


class Noisy(nn.Module):
    """Adds input noise even in eval mode: a randomized defense."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x + 0.05 * torch.randn_like(x))


class Tempered(nn.Module):
    """Logits times a large temperature: same predictions, a softmax that saturates, so CE's input
    gradient underflows to zero on confident examples while the margin's only scales."""

    def __init__(self, model: nn.Module, temperature: float) -> None:
        super().__init__()
        self.model = model
        self.temperature = temperature

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) * self.temperature


class _NanGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # noqa: ANN001 - autograd's signature
        return x.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        return grad * float("nan")


class NanGradient(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(_NanGrad.apply(x))


@pytest.fixture(scope="module")
def underfit(trained_digits_model) -> nn.Module:
    """8 epochs (~62% clean): CE-PGD stalls on a few examples that a margin loss breaks, which is not masking."""
    return trained_digits_model(epochs=8)


@pytest.mark.parametrize("which", ["model", "underfit"])
def test_a_plain_model_raises_no_flag(request, test_set, which) -> None:
    result = evaluate(request.getfixturevalue(which), test_set, "pgd10", EvalSettings(eps=EPS, n_examples=128, batch_size=128))
    assert [outcome.name for outcome in result.checks] == ["gradients", "randomness", "unbounded", "black-box", "pgd-steps", "pgd-margin"]
    assert result.flags == ()


def test_a_quantized_model_that_masks_gradients_is_flagged(model, test_set) -> None:
    masked = Quantized(model)
    result = evaluate(masked, test_set, "pgd10", EvalSettings(eps=EPS, n_examples=128, batch_size=128))
    plain = evaluate(model, test_set, "pgd10", EvalSettings(eps=EPS, n_examples=128, batch_size=128, checks=None))
    assert result.robust_acc > plain.robust_acc + 0.1  # the masking fools PGD-10 into a higher number
    assert {"zero-gradients", "unbounded-pgd-not-zero", "black-box-beats-white-box", "pgd-steps-no-gain"} <= set(result.flags)
    assert set(result.flags) <= set(FLAGS)


def test_a_random_forward_pass_is_flagged(model, test_set) -> None:
    x = test_set[0][:32]
    assert check_randomness(Noisy(model), x, CheckConfig()).flag == "random-forward"
    assert check_randomness(model, x, CheckConfig()).flag is None


def test_nan_and_zero_gradients_are_told_apart(model, test_set) -> None:
    x, y = test_set[0][:16], test_set[1][:16]
    assert check_gradients(NanGradient(model), x, y).flag == "nan-gradients"
    assert check_gradients(Quantized(model), x, y).flag == "zero-gradients"
    assert check_gradients(model, x, y).flag is None


def test_margin_loss_is_best_wrong_minus_true_logit() -> None:
    logits = torch.tensor([[2.0, 5.0, 1.0], [0.0, -1.0, 3.0]])
    assert margin_loss(logits, torch.tensor([1, 0])).item() == pytest.approx((2.0 - 5.0) + (3.0 - 0.0))


def _flags(bits: str) -> torch.Tensor:
    return torch.tensor([b == "1" for b in bits])


def test_black_box_gain_uses_autoattacks_threshold() -> None:
    """Square may lower robust accuracy by at most 0.2% of the examples (AutoAttack's check_square_sr)."""
    settings = AttackSettings(EPS)
    attacks = (AutoAttackPart("apgd-ce", settings), AutoAttackPart("square", settings))
    n = 1000
    clean = torch.ones(n, dtype=torch.bool)
    before = clean.clone()
    for gained, flagged in ((2, False), (3, True)):
        after = before.clone()
        after[:gained] = False
        outcome = check_black_box_in_suite(attacks, clean, {"apgd-ce": before, "square": after}, CheckConfig())
        assert (outcome.flag == "black-box-beats-white-box") is flagged, gained


@pytest.mark.parametrize(
    ("r10", "r100", "reference", "flagged"),
    [
        ("1111111100", "1111111100", "1111111100", False),  # no gap: PGD-10 had converged
        ("1111111100", "1111111100", "1111110000", True),  # a gap of 2 and no gain at all
        ("1111111100", "1111111000", "1111110000", False),  # PGD-100 gains: the gradient works
        ("1111111100", "1111111100", "1111111000", False),  # a gap of 1 is below min_gap_examples
    ],
)
def test_pgd_steps_flag_needs_a_gap_and_no_gain(r10, r100, reference, flagged) -> None:
    outcome = check_pgd_steps(_flags(r10), _flags(r100), _flags(reference), CheckConfig())
    assert (outcome.flag == "pgd-steps-no-gain") is flagged


def test_check_config_rejects_useless_settings() -> None:
    with pytest.raises(UsageError):
        CheckConfig(long_steps=10)
    with pytest.raises(UsageError):
        CheckConfig(margin_alpha=0.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_temperature_300_is_flagged_by_the_margin_check_and_the_plain_model_is_not(model, test_set, seed) -> None:
    """Scaling the logits by 300 lifts PGD-10 (CE) well above what a margin attack finds; the
    pgd-margin check (the attacks run_checks runs, at each attack seed) must flag it and pass
    the plain model."""
    x, y = test_set[0][:128], test_set[1][:128]
    config = CheckConfig()
    pgd10 = PGD(EPS, steps=10, seed=seed)
    margin = PGD(EPS, steps=config.long_steps, seed=seed, loss_fn=margin_loss)
    outcomes, robust = {}, {}
    for name, candidate in (("plain", model), ("tempered", Tempered(model, 300.0))):
        r10 = ~pgd10(candidate, x, y).success
        outcomes[name] = check_pgd_margin(r10, ~margin(candidate, x, y).success, config)
        robust[name] = r10.float().mean().item()
    assert robust["tempered"] > robust["plain"] + 0.1, "the temperature fools PGD-10"
    assert outcomes["tempered"].flag == "margin-attack-beats-pgd10"
    assert outcomes["plain"].flag is None


def test_run_checks_flags_the_tempered_model_beside_the_eps1_check(model, test_set) -> None:
    result = evaluate(Tempered(model, 300.0), test_set, "pgd10", EvalSettings(eps=EPS, n_examples=128, batch_size=128))
    outcomes = {outcome.name: outcome.flag for outcome in result.checks}
    assert outcomes["pgd-margin"] == "margin-attack-beats-pgd10"
    assert "margin-attack-beats-pgd10" in result.flags


def _exact_one_sided(gained: int, lost: int) -> float:
    """P(X >= gained) for X ~ Binomial(gained + lost, 1/2), by the closed form."""
    n = gained + lost
    return sum(math.comb(n, k) for k in range(gained, n + 1)) / 2**n


@pytest.mark.parametrize(
    ("n", "gained", "lost", "flagged"),
    [
        (128, 7, 0, True),  # p = 1/128 < 0.01 and a gain of 5.5 points
        (128, 6, 0, False),  # p = 1/64: could be noise
        (128, 12, 6, False),  # 6 net of 128 = 4.7 points, but p = 0.12
        (128, 0, 0, False),  # the attacks agree everywhere
        (2000, 50, 0, False),  # p tiny, but 2.5 points is what a stronger attack gains
        (2000, 80, 10, True),  # 3.5 points, p tiny
    ],
)
def test_margin_check_is_an_exact_mcnemar_test_with_a_tolerated_gain(n, gained, lost, flagged) -> None:
    r10 = torch.zeros(n, dtype=torch.bool)
    r_margin = torch.zeros(n, dtype=torch.bool)
    r10[: gained + 40] = True  # 40 examples robust to both
    r_margin[gained : gained + 40 + lost] = True
    outcome = check_pgd_margin(r10, r_margin, CheckConfig())
    assert (outcome.flag == "margin-attack-beats-pgd10") is flagged
    assert outcome.flag is None or outcome.flag in FLAGS
    expected = _exact_one_sided(gained, lost) if gained + lost else 1.0
    assert f"p = {expected:.2g}" in outcome.detail
    assert f"{gained} broken only by the margin attack, {lost} only by PGD-10" in outcome.detail


def test_checks_default_to_at_least_128_examples() -> None:
    assert CheckConfig().n_examples >= 128
