"""The statistics behind every published number: Wilson intervals and the exact paired test.

A robust accuracy on n examples is a binomial proportion, so it is shown with its 95% Wilson
score interval (good coverage near 0 and 1, where robust accuracies live; the Wald interval
collapses there). Two models measured on the same examples are compared on their discordant
pairs: b examples only the first got right, c only the second. Conditional on m = b + c, b is
Binomial(m, 1/2) when the models are equally accurate, which is the exact McNemar test; the
Clopper-Pearson interval of b/m, mapped to (b - c)/n, is the matching interval of the accuracy
difference (it excludes 0 exactly when the test rejects at 5%). scipy computes both.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import binomtest, fisher_exact

CONFIDENCE = 0.95
ALPHA = 1 - CONFIDENCE


def wilson(k: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The Wilson score interval of the proportion k/n, as fractions."""
    if not 0 <= k <= n or n < 1:
        raise ValueError(f"need 0 <= k <= n and n >= 1, got k={k}, n={n}")
    interval = binomtest(k, n).proportion_ci(confidence_level=confidence, method="wilson")
    return float(interval.low), float(interval.high)


def count(fraction: float, n: int) -> int:
    """The number of examples behind an accuracy recorded as a fraction of n."""
    return round(fraction * n)


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts (1.0 when there are none)."""
    return 1.0 if b + c == 0 else float(binomtest(b, b + c, 0.5).pvalue)


def fisher_unpaired(k1: int, n1: int, k2: int, n2: int) -> float:
    """Two-sided Fisher exact p-value for two proportions without per-example outcomes.

    For two models scored on the same examples the outcomes are positively correlated, so this
    unpaired test is the conservative fallback when the pairing was not recorded.
    """
    return float(fisher_exact([[k1, n1 - k1], [k2, n2 - k2]]).pvalue)


@dataclass(frozen=True)
class Paired:
    """Model A against model B on the same n examples."""

    n: int
    a_correct: int
    b_correct: int
    only_a: int  # discordant pairs: A right, B wrong
    only_b: int
    low: float  # interval of acc(A) - acc(B), fractions
    high: float
    p_value: float  # exact McNemar

    @property
    def difference(self) -> float:
        return (self.only_a - self.only_b) / self.n

    @property
    def significant(self) -> bool:
        return self.p_value < ALPHA


def paired(a: np.ndarray, b: np.ndarray, confidence: float = CONFIDENCE) -> Paired:
    """Compare per-example correctness vectors (bool, same examples in the same order)."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if a.shape != b.shape or a.ndim != 1 or not len(a):
        raise ValueError(f"need two equally long non-empty flag vectors, got shapes {a.shape} and {b.shape}")
    n, only_a, only_b = len(a), int((a & ~b).sum()), int((~a & b).sum())
    m = only_a + only_b
    if m:
        ci = binomtest(only_a, m).proportion_ci(confidence_level=confidence, method="exact")
        low, high = m * (2 * ci.low - 1) / n, m * (2 * ci.high - 1) / n
    else:  # identical outcomes: no discordant pair, the difference on these examples is exactly 0
        low = high = 0.0
    return Paired(n, int(a.sum()), int(b.sum()), only_a, only_b, float(low), float(high), mcnemar_exact(only_a, only_b))
