"""Which test examples an evaluation uses by default: the paper's protocol, declared once."""

from __future__ import annotations

from ssmbench.attacks import get_suite_spec
from ssmbench.attacks.suites import SUITES
from ssmbench.data import DATASETS  # importing it registers every built-in data set, the series ones too

AUTOATTACK_EXAMPLES = 2000  # the paper (and RobustBench): AutoAttack on the first 2000 test images


def default_examples(suite: str, available: int) -> int:
    """AutoAttack suites on the first 2000 test images (or all, if fewer), PGD-10 on the whole test set."""
    return min(AUTOATTACK_EXAMPLES, available) if get_suite_spec(suite).uses_autoattack else available


PUBLISHED_AUTOATTACK_MIN = 200  # issue 13: below this an AutoAttack figure is too noisy to publish


def below_publication_standard(suite: str, n_examples: int, dataset: str) -> str | None:
    """Why a result is too thin to stand on a published leaderboard, or None when it is not.

    With 32 images one image is 3.1 points and a 95% Wilson interval is 15-33 points wide (at 97%
    and 50% accuracy), so two models a few points apart cannot be told apart; 200 images bring that
    to 5-14 points. A data set whose
    whole test split is smaller (BasicMotions has 40 series) meets the standard with all of it.
    """
    if suite not in SUITES or not SUITES.get(suite).uses_autoattack:  # a row's own attack (e.g. square) has no standard
        return None
    split = DATASETS.get(dataset).test_size if dataset in DATASETS else PUBLISHED_AUTOATTACK_MIN
    needed = min(PUBLISHED_AUTOATTACK_MIN, split)
    if n_examples >= needed:
        return None
    whole = " (its whole test split)" if needed == split else ""
    return f"AutoAttack on {n_examples} examples; a published figure needs at least {needed}{whole}"
