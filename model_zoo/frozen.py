"""`frozen_weights(model)`: inside it, weight-only quantities are computed once and reused.

An attack takes many forward/backward passes through the same weights: PGD-10 inside PGD-AT is
ten passes per batch, AutoAttack thousands per example. An LTI mixer's convolution kernel (S4's
Cauchy + Woodbury evaluation, DSS's softmax Vandermonde, S4D's and S5's ZOH powers, Mega's EMA)
and Mamba's A = -exp(A_log) depend on the weights alone, so recomputing them on every pass is
waste. Inside `frozen_weights(model)` every module's `WeightCache` computes such a quantity once,
without autograd to the parameters (an attack needs input gradients only), and serves it to every
later pass for which the weights are unchanged. Eval mode behaves the same way without the context
(evaluation never trains), so the context is what training methods enter around their inner
maximization, whose passes run in train mode.

Exactness: the cached value is the very tensor the uncached pass would compute (same operations,
same inputs) minus its autograd history, and an input gradient does not depend on that history, so
adversarial examples and the weights after an update are bit-identical to the uncached path (tested
in tests/test_frozen_weights.py for every mixer). The cache key holds every parameter's and
buffer's storage address and version counter, so a weight written in place (an optimizer step
inside the context, `load_state_dict`) is never served a stale value.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

# Attribute set on every submodule while a `frozen_weights` context holds it (a depth: contexts nest).
_FROZEN = "_frozen_weights_depth"


@contextmanager
def frozen_weights(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, compute every weight-only quantity of `model` once and reuse it.

    For the attack passes of adversarial training; the block must not need gradients to the
    parameters through those quantities (a weight update inside it would silently miss them).
    """
    modules = list(model.modules())
    for module in modules:
        object.__setattr__(module, _FROZEN, getattr(module, _FROZEN, 0) + 1)
    try:
        yield model
    finally:
        for module in modules:
            object.__setattr__(module, _FROZEN, getattr(module, _FROZEN) - 1)


def weights_frozen(module: nn.Module) -> bool:
    """True inside `frozen_weights` over a model containing `module`, or in eval mode."""
    return not module.training or getattr(module, _FROZEN, 0) > 0


class WeightCache:
    """Memoizes one function of a module's weights while they are frozen (see `frozen_weights`).

    Outside a frozen context in train mode nothing is cached and gradients flow to the parameters
    as usual. While frozen, the value is computed under no_grad and kept under a key of the caller's
    `extra_key` (length, device, dtype...) and every parameter's and buffer's address and version:
    an optimizer step or `load_state_dict` writes in place and bumps the version, `.to(device)`
    changes the address. Buffers count too: a fixed part of a kernel (S4's Re(Lambda) with
    train_real=False) is a buffer that `load_state_dict` overwrites.
    """

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._value: Any = None

    def get(self, module: nn.Module, extra_key: tuple, compute: Callable[[], Any]) -> Any:
        if not weights_frozen(module):
            self._key = self._value = None
            return compute()
        tensors = itertools.chain(module.parameters(), module.buffers())
        key = (extra_key, tuple((t.data_ptr(), t._version) for t in tensors))
        if key != self._key:
            with torch.no_grad():
                self._value = compute()
            self._key = key
        return self._value
