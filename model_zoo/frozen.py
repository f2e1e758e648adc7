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

`shared_weights(model)` is the same saving for passes that train: TRADES' and MART's clean and
adversarial passes, YOPO's m full passes, all through one set of weights before one optimizer
step. There the quantity is computed once *with* its graph and every pass receives a detached copy
that requires grad (a leaf), whose gradient accumulates over the passes' backward calls; when the
block ends, that sum is sent through the graph once. The parameters' gradients are then the same
sum as before in another order of additions (equal to float rounding, not bit for bit), for one
kernel computation and one kernel backward per batch instead of one per pass. Measured guidance
(2-core CPU under load, one thread, d_model 64, batch 16, L 64): the two S4 kernels' forward and
backward take 9.8 ms of a 24 ms training pass (DSS 7.3 of 22.8).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

# Attributes set on every submodule while a `frozen_weights` / `shared_weights` context holds it:
# a depth for frozen (those contexts nest), a 0/1 flag for shared (it does not nest).
_FROZEN = "_frozen_weights_depth"
_SHARED = "_shared_weights_depth"


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


@contextmanager
def shared_weights(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, training passes share each weight-only quantity (computed once with its
    graph); on leaving it, the gradient accumulated over the passes is sent through that graph once.

    For a method's passes between two optimizer steps: step after the block, never inside it. A
    `frozen_weights` block inside it (the attack) keeps its own no-grad copy. Does not nest.
    Under DistributedDataParallel it does nothing: DDP averages a parameter's gradient in the
    backward call that produces it, and the kernel's gradient would arrive after that, unaveraged.
    """
    if isinstance(model, nn.parallel.DistributedDataParallel):
        yield model
        return
    modules = list(model.modules())
    caches = [cache for module in modules if isinstance(cache := getattr(module, "weight_cache", None), WeightCache)]
    for module in modules:
        object.__setattr__(module, _SHARED, 1)
    try:
        yield model
        for cache in caches:
            cache.flush_shared()
    finally:
        for module in modules:
            object.__setattr__(module, _SHARED, 0)
        for cache in caches:
            cache.drop_shared()


def _leaves(value: Any) -> Any:
    """value with each tensor that requires grad replaced by a detached copy that requires grad."""
    if isinstance(value, tuple):
        return tuple(_leaves(item) for item in value)
    if isinstance(value, torch.Tensor) and value.requires_grad:
        return value.detach().requires_grad_()
    return value


def _tensors(value: Any) -> list[Any]:
    return [t for item in value for t in _tensors(item)] if isinstance(value, tuple) else [value]


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
        # shared_weights: (key, the value with its graph, the leaves handed to the passes)
        self._shared: tuple[tuple, Any, Any] | None = None

    def get(self, module: nn.Module, extra_key: tuple, compute: Callable[[], Any]) -> Any:
        if weights_frozen(module):
            key = self._weights_key(module, extra_key)
            if key != self._key:
                with torch.no_grad():
                    self._value = compute()
                self._key = key
            return self._value
        self._key = self._value = None
        if not getattr(module, _SHARED, 0):
            return compute()
        key = self._weights_key(module, extra_key)
        if self._shared is None or self._shared[0] != key:
            self.flush_shared()  # another length or dtype: the earlier value's gradient goes through first
            value = compute()
            self._shared = (key, value, _leaves(value))
        return self._shared[2]

    def flush_shared(self) -> None:
        """Send the gradient accumulated on the shared leaves through the value's graph, once."""
        if self._shared is None:
            return
        _, value, leaves = self._shared
        self._shared = None
        pairs = [(v, leaf.grad) for v, leaf in zip(_tensors(value), _tensors(leaves))
                 if isinstance(leaf, torch.Tensor) and leaf.grad is not None]
        if pairs:
            torch.autograd.backward([v for v, _ in pairs], [grad for _, grad in pairs])

    def drop_shared(self) -> None:
        self._shared = None

    @staticmethod
    def _weights_key(module: nn.Module, extra_key: tuple) -> tuple:
        tensors = itertools.chain(module.parameters(), module.buffers())
        return (extra_key, tuple((t.data_ptr(), t._version) for t in tensors))
