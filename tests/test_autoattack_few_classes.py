"""AutoAttack with fewer classes than its DLR losses need: the undefined part is left out and flagged.

APGD-T's targeted DLR loss reads the 3rd and 4th largest logits and APGD-DLR's the 3rd, so with
2 classes (GunPoint) or 3 both implementations index past the logits. These tests hold the
rule at its boundaries (skipped below, run at the threshold) in both backends, and check that the
flag reaches the evaluation's result, so such a row never reads as the whole of AutoAttack.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ssmbench.attacks import AttackSettings
from ssmbench.attacks.autoattack import MIN_CLASSES, UNDEFINED_PART_FLAG, AutoAttackPart
from ssmbench.evaluate import EvalSettings, evaluate

EPS = 8 / 255


def linear_model(n_classes: int) -> nn.Module:
    """A seeded linear classifier on 1 x 4 x 4 images: cheap enough for 100-step attacks."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, n_classes)).eval()


def images(n: int = 6) -> torch.Tensor:
    return torch.rand(n, 1, 4, 4, generator=torch.Generator().manual_seed(1))


def correctly_classified(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Labels = the model's own predictions, so every example is an attack target."""
    with torch.no_grad():
        return model(x).argmax(1)


@pytest.mark.parametrize("backend", ["official", "torchattacks"])
@pytest.mark.parametrize(("part", "version"), [("apgd-t", "standard"), ("apgd-dlr", "plus")])
def test_a_dlr_part_below_its_class_count_is_not_run_and_says_so(backend: str, part: str, version: str) -> None:
    model = linear_model(MIN_CLASSES[part] - 1)
    x = images()
    found = AutoAttackPart(part, AttackSettings(eps=EPS, backend=backend, version=version, seed=0))(model, x, correctly_classified(model, x))
    assert torch.equal(found.x_adv, x) and not found.success.any()
    assert found.warnings == (UNDEFINED_PART_FLAG,)


@pytest.mark.parametrize("backend", ["official", "torchattacks"])
@pytest.mark.parametrize(("part", "version"), [("apgd-t", "standard"), ("apgd-dlr", "plus")])
def test_a_dlr_part_at_its_class_count_runs(backend: str, part: str, version: str) -> None:
    model = linear_model(MIN_CLASSES[part])
    x, eps = images(), 0.5  # a radius at which a linear model is fooled somewhere
    found = AutoAttackPart(part, AttackSettings(eps=eps, backend=backend, version=version, seed=0))(model, x, correctly_classified(model, x))
    assert UNDEFINED_PART_FLAG not in found.warnings
    assert found.success.any()  # the attack ran and fooled examples, within the ball
    assert (found.x_adv - x).abs().max() <= eps + 1e-6


def test_standard_autoattack_on_two_classes_runs_the_other_parts_and_flags_the_result() -> None:
    model = linear_model(2)
    x = images(8)
    y = correctly_classified(model, x)
    result = evaluate(model, (x, y), "autoattack", EvalSettings(eps=EPS, checks=None, device="cpu"))
    assert list(result.per_attack) == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert result.per_attack["apgd-t"] == result.per_attack["apgd-ce"]  # not run: it fooled nothing
    assert UNDEFINED_PART_FLAG in result.flags
