"""Per-example outcomes as the leaderboard stores them: bit-packed, with what identifies the examples.

A row keeps one bit per example for clean correctness and for "still robust after attack i" (in
the order the suite ran them; the last is the final robust verdict), so intervals, paired tests
and seed aggregates can be recomputed from the record alone. 360 examples and 3 attacks are
180 bytes. The examples are named by dataset, split, "first N" and the sha256 of their labels, so
two rows can be checked to describe the same examples before they are paired.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch


def labels_sha256(labels: torch.Tensor) -> str:
    """sha256 of the labels as little-endian int64: the same examples in the same order hash alike."""
    return hashlib.sha256(labels.detach().cpu().to(torch.int64).numpy().astype("<i8").tobytes()).hexdigest()


def first_n(n: int) -> str:
    """How a row names the examples that evaluate() uses: the first n of the split, in order."""
    return f"first {n}"


@dataclass(frozen=True)
class PerExample:
    """Bool vectors of one evaluation: clean correct, and robust after each attack in run order."""

    clean: np.ndarray
    robust_after: dict[str, np.ndarray]

    @property
    def robust(self) -> np.ndarray:
        """The final verdict: robust after the last attack (each attack runs on the survivors)."""
        return list(self.robust_after.values())[-1]

    @property
    def attacks(self) -> tuple[str, ...]:
        return tuple(self.robust_after)

    def pack(self) -> bytes:
        """One packbits row per vector (clean first), each padded to whole bytes."""
        matrix = np.stack([self.clean, *self.robust_after.values()]).astype(bool)
        return np.packbits(matrix, axis=1).tobytes()

    @classmethod
    def unpack(cls, data: bytes, attacks: tuple[str, ...], n: int) -> PerExample:
        """The inverse of pack(), for n examples; a length that does not fit is a ValueError."""
        width = (n + 7) // 8
        if len(data) != width * (1 + len(attacks)):
            raise ValueError(f"{len(data)} bytes of per-example outcomes do not fit {n} examples x {1 + len(attacks)} vectors")
        bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8).reshape(1 + len(attacks), width), axis=1, count=n).astype(bool)
        return cls(bits[0], dict(zip(attacks, bits[1:], strict=True)))

    @classmethod
    def from_tensors(cls, clean: torch.Tensor, robust_after: dict[str, torch.Tensor]) -> PerExample:
        return cls(clean.cpu().numpy().astype(bool), {k: v.cpu().numpy().astype(bool) for k, v in robust_after.items()})
