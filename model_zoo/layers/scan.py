"""In-place solver for diagonal linear recurrences along dim 1 by cyclic (odd-even) reduction,
and its exact adjoint.

    h_t = a_t * h_{t-1} + b_t        (h_{-1} = 0)

Why cyclic reduction: folding each even step into the odd step after it halves the recurrence, so
log2(n) levels of whole-tensor operations replace n sequential steps. Every level works on strided
views of the caller's buffers with fused `addcmul_`/`mul_`, so the total work is three multiply-adds
per element (a Hillis-Steele scan needs log2(n)) and nothing is allocated. Only products of the
coefficients are formed: with |a| <= 1 no intermediate can grow (no exp of a positive sum, no
division by a decay). Any length and any dtype work, complex included.

The adjoint (dL/db from dL/dh, which for this recurrence is the backward state lambda_t =
dL/dh_t + a_{t+1} lambda_{t+1}) is the same elimination transposed and run in reverse; it reuses
the coefficient products of the forward solve when those were kept.

A solve is built as a `ScanPlan`: the list of in-place operations on fixed views of the buffers.
Callers that solve many tiles in the same buffers (the chunked selective scan) build the plan once
and `run` it per tile, which removes the cost of re-slicing the views in Python every time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch

Step = tuple[Callable[..., Any], tuple[Any, ...]]


@dataclass
class ScanPlan:
    """The operations of one solve; `levels` are the reduction coefficients (level 0 is a)."""

    steps: list[Step] = field(default_factory=list)
    levels: list[torch.Tensor] = field(default_factory=list)

    def run(self) -> None:
        for fn, args in self.steps:
            fn(*args)


def plan_linear_scan(a: torch.Tensor, b: torch.Tensor, keep_in: torch.Tensor | None = None) -> ScanPlan:
    """Plan overwriting b with h.

    keep_in=None: the level coefficients are built in place, so running the plan clobbers `a`.
    keep_in=a buffer shaped like a: `a` is left intact and the levels are stored in that buffer,
    so that `plan_linear_scan_adjoint` can reuse them.
    """
    plan = ScanPlan(levels=[a])
    _plan_reduce(a, b, keep_in, 0, plan)
    return plan


def _plan_reduce(a: torch.Tensor, b: torch.Tensor, store: torch.Tensor | None, offset: int, plan: ScanPlan) -> None:
    n = b.shape[1]
    if n < 2:
        return
    n_odd, n_even = n // 2, (n + 1) // 2
    a_even, a_odd = a[:, 0::2], a[:, 1::2]
    b_even, b_odd = b[:, 0::2], b[:, 1::2]
    # Fold each even step into the odd step after it: h_{2i+1} = a_{2i+1} a_{2i} h_{2i-1} + ...
    plan.steps.append((b_odd.addcmul_, (a_odd, b_even[:, :n_odd])))
    if store is None:
        a_next = a_odd
        plan.steps.append((a_odd.mul_, (a_even[:, :n_odd],)))
    else:
        a_next = store[:, offset : offset + n_odd]
        plan.steps.append((partial(torch.mul, out=a_next), (a_odd, a_even[:, :n_odd])))
    plan.levels.append(a_next)
    _plan_reduce(a_next, b_odd, store, offset + n_odd, plan)
    # Back-substitute the even steps from the solved odd ones.
    plan.steps.append((b_even[:, 1:].addcmul_, (a_even[:, 1:], b_odd[:, : n_even - 1])))


def plan_linear_scan_adjoint(forward: ScanPlan, g: torch.Tensor) -> ScanPlan:
    """Plan overwriting g = dL/dh with dL/db for the solve `forward` (planned with keep_in)."""
    plan = ScanPlan(levels=forward.levels)
    _plan_reduce_adjoint(forward.levels, 0, g, plan)
    return plan


def _plan_reduce_adjoint(levels: list[torch.Tensor], depth: int, g: torch.Tensor, plan: ScanPlan) -> None:
    n = g.shape[1]
    if n < 2:
        return
    n_odd, n_even = n // 2, (n + 1) // 2
    a = levels[depth]
    a_even, a_odd = a[:, 0::2], a[:, 1::2]
    g_even, g_odd = g[:, 0::2], g[:, 1::2]
    # Transposes of the forward steps, in reverse order.
    plan.steps.append((g_odd[:, : n_even - 1].addcmul_, (a_even[:, 1:], g_even[:, 1:])))
    _plan_reduce_adjoint(levels, depth + 1, g_odd, plan)
    plan.steps.append((g_even[:, :n_odd].addcmul_, (a_odd, g_odd)))


def linear_scan_(a: torch.Tensor, b: torch.Tensor) -> None:
    """Overwrite b with the solution h of h_t = a_t h_{t-1} + b_t along dim 1; clobbers a."""
    plan_linear_scan(a, b).run()
