"""Sanity checks: a model built to mask gradients is flagged, a plain one is not, and each
criterion triggers exactly at its documented threshold."""

from __future__ import annotations


import pytest
import torch
from torch import nn

from model_zoo.errors import UsageError
from ssmbench.attack_backends import AutoAttackPart
from ssmbench.attacks import AttackSettings
from ssmbench.checks import (
    FLAGS,
    CheckConfig,
    check_black_box_in_suite,
    check_gradients,
    check_pgd_steps,
    check_randomness,
    margin_loss,
)
from ssmbench.evaluate import evaluate

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
    result = evaluate(request.getfixturevalue(which), *test_set, "pgd10", EPS, n_examples=128, batch_size=128)
    assert [outcome.name for outcome in result.checks] == ["gradients", "randomness", "unbounded", "black-box", "pgd-steps"]
    assert result.flags == ()


def test_a_quantized_model_that_masks_gradients_is_flagged(model, test_set) -> None:
    masked = Quantized(model)
    result = evaluate(masked, *test_set, "pgd10", EPS, n_examples=128, batch_size=128)
    plain = evaluate(model, *test_set, "pgd10", EPS, n_examples=128, batch_size=128, checks=None)
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
