"""The statistics behind every published number: Wilson intervals and the exact paired test.

A robust accuracy on n examples is a binomial proportion, so it is shown with its 95% Wilson
score interval (good coverage near 0 and 1, where robust accuracies live; the Wald interval
collapses there). Two models measured on the same examples are compared on their discordant
pairs: b examples only the first got right, c only the second. Conditional on m = b + c, b is
Binomial(m, 1/2) when the models are equally accurate: the exact McNemar test, computed by scipy.
The interval of the accuracy difference (b - c) / n is Agresti and Min's (2005) adjusted Wald
interval for matched proportions: add 1/2 to each of the four cells of the 2x2 table, then Wald.
Unlike the plain Wald interval it does not collapse to a point when b = c = 0, and unlike an
interval conditional on m it does not cap the difference at the observed (b + c) / n.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import binomtest, fisher_exact, norm

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
    # Agresti-Min: every cell + 1/2, so n + 2 pseudo-examples; then the Wald interval of the
    # mean paired difference, whose variance is ((b + c) - (b - c)^2 / n) / n^2.
    b_adj, c_adj, n_adj = only_a + 0.5, only_b + 0.5, n + 2
    centre = (b_adj - c_adj) / n_adj
    half = float(norm.ppf(0.5 + confidence / 2)) * np.sqrt((b_adj + c_adj) - (b_adj - c_adj) ** 2 / n_adj) / n_adj
    low, high = max(-1.0, centre - half), min(1.0, centre + half)
    return Paired(n, int(a.sum()), int(b.sum()), only_a, only_b, float(low), float(high), mcnemar_exact(only_a, only_b))
