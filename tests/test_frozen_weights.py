"""frozen_weights: the attack passes of adversarial training compute each weight-only quantity once
per batch, and nothing they produce changes (bit for bit, CPU float32, fixed seed)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
import torch
from torch import nn

from model_zoo import build_model
from model_zoo.frozen import WeightCache, frozen_weights, shared_weights, weights_frozen
from model_zoo.training import methods
from model_zoo.training.methods import METHODS, MethodContext, get_method
from model_zoo.training.settings import MethodParams, ThreatModel

SMALL = {"d_model": 16, "d_state": 8, "n_layers": 2}
ARCHS = ["s4", "dss", "s4d", "s5", "mamba", "mega"]
STEPS = 4


@contextlib.contextmanager
def uncached(_model: nn.Module) -> Iterator[nn.Module]:
    """What the methods ran before frozen_weights existed: every pass recomputes."""
    yield _model


def count_computations(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Count every weight-only computation (each WeightCache compute call), frozen or not."""
    counts = {"frozen": 0, "training": 0}
    original = WeightCache.get

    def get(self: WeightCache, module: nn.Module, extra_key: tuple, compute):  # type: ignore[no-untyped-def]
        def counted():  # type: ignore[no-untyped-def]
            counts["frozen" if weights_frozen(module) else "training"] += 1
            return compute()

        return original(self, module, extra_key, counted)

    monkeypatch.setattr(WeightCache, "get", get)
    return counts


def small_model(arch: str) -> nn.Module:
    torch.manual_seed(0)
    return build_model(arch, "digits", **SMALL).train()


def method_params(method: str) -> MethodParams:
    return METHODS.get(method).params()


def context(model: nn.Module, method: str = "pgd", seed: int = 1) -> MethodContext:
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    return MethodContext(optimizer, method_params(method), ThreatModel(steps=STEPS), generator=generator)


@pytest.mark.parametrize("arch", ARCHS)
def test_one_kernel_computation_per_layer_for_the_whole_pgd_attack(arch: str, monkeypatch: pytest.MonkeyPatch) -> None:
    model = small_model(arch)
    x, y = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
    counts = count_computations(monkeypatch)
    get_method("pgd")(model, x, y, context(model))
    layers = SMALL["n_layers"]
    # The STEPS attack passes share one computation per layer; the update pass builds its own.
    assert counts == {"frozen": layers, "training": layers}
    monkeypatch.setattr(methods, "frozen_weights", uncached)
    counts.update(frozen=0, training=0)
    get_method("pgd")(small_model(arch), x, y, context(model))
    assert counts == {"frozen": 0, "training": layers * (STEPS + 1)}


def run_epoch(arch: str, method: str) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
    """Four batches of `method` from a fixed seed: every batch's x_adv and the final weights."""
    model = small_model(arch)
    data = torch.Generator().manual_seed(2)
    images, labels = torch.rand(16, 1, 8, 8, generator=data), torch.randint(0, 10, (16,), generator=data)
    ctx = context(model, method)
    adversarial = []
    for batch in range(4):
        rows = slice(4 * batch, 4 * batch + 4)
        adversarial.append(get_method(method)(model, images[rows], labels[rows], ctx).x_adv)
    return adversarial, {name: p.detach().clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize(
    ("arch", "method"), [(arch, "pgd") for arch in ARCHS] + [("s4", "trades"), ("dss", "mart"), ("mamba", "fgsm-rs")]
)
def test_an_epoch_through_frozen_weights_is_bit_identical_to_the_uncached_one(
    arch: str, method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    cached_adv, cached_weights = run_epoch(arch, method)
    monkeypatch.setattr(methods, "frozen_weights", uncached)
    plain_adv, plain_weights = run_epoch(arch, method)
    for ours, theirs in zip(cached_adv, plain_adv):
        assert torch.equal(ours, theirs)
    assert cached_weights.keys() == plain_weights.keys()
    for name, weight in cached_weights.items():
        assert torch.equal(weight, plain_weights[name]), name
    # The training moved the weights: an epoch that changed nothing would compare equal trivially.
    assert not torch.equal(cached_weights["encoder.weight"], small_model(arch).encoder.weight.detach())


def test_a_weight_written_inside_the_context_is_never_served_stale() -> None:
    model = small_model("s4")
    x = torch.rand(2, 1, 8, 8)
    with frozen_weights(model):
        before = model(x)
        with torch.no_grad():
            for block in model.blocks:
                block.mixer.log_dt.add_(0.5)  # in place, as an optimizer step writes
        after = model(x)
    assert not torch.equal(before, after)
    torch.testing.assert_close(after, model(x), rtol=0, atol=0)


def test_the_context_nests_and_restores_train_mode_behaviour(monkeypatch: pytest.MonkeyPatch) -> None:
    model = small_model("dss")
    counts = count_computations(monkeypatch)
    x = torch.rand(2, 1, 8, 8)
    with frozen_weights(model):
        with frozen_weights(model):
            model(x)
        model(x)  # still frozen after the inner block
    assert counts == {"frozen": SMALL["n_layers"], "training": 0}
    model(x)
    assert counts["training"] == SMALL["n_layers"]
    assert not any(weights_frozen(m) for m in model.modules())


def test_cached_kernels_carry_no_autograd_history() -> None:
    model = small_model("s4")
    with frozen_weights(model):
        model(torch.rand(2, 1, 8, 8)).sum().backward()
    assert all(p.grad is None for name, p in model.named_parameters() if "mixer" in name and name.endswith(("log_dt", "c")))


# -- shared_weights: the passes that train, one kernel per batch ----------------------------------

SHARED_PASSES = {"trades": 2, "mart": 2, "yopo": 5}  # training passes per batch (YOPO: its m = 5)


@pytest.mark.parametrize("method", sorted(SHARED_PASSES))
@pytest.mark.parametrize("arch", ["s4", "mamba"])
def test_the_training_passes_of_a_batch_share_one_computation_per_layer(arch: str, method: str, monkeypatch: pytest.MonkeyPatch) -> None:
    x, y = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
    counts = count_computations(monkeypatch)
    model = small_model(arch)
    get_method(method)(model, x, y, context(model, method))
    assert counts["training"] == SMALL["n_layers"]
    monkeypatch.setattr(methods, "shared_weights", uncached)
    counts.update(frozen=0, training=0)
    model = small_model(arch)
    get_method(method)(model, x, y, context(model, method))
    assert counts["training"] == SMALL["n_layers"] * SHARED_PASSES[method]


@pytest.mark.parametrize("method", sorted(SHARED_PASSES))
@pytest.mark.parametrize("arch", ["s4", "dss", "s5", "mamba", "mega"])
def test_shared_kernels_give_the_same_update_up_to_float_rounding(arch: str, method: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The gradient summed over the passes, then sent through the kernel once, equals the per-pass sum."""
    shared_adv, shared_weights_after = run_epoch(arch, method)
    monkeypatch.setattr(methods, "shared_weights", uncached)
    plain_adv, plain_weights = run_epoch(arch, method)
    for name, weight in shared_weights_after.items():
        torch.testing.assert_close(weight, plain_weights[name], rtol=1e-5, atol=1e-6, msg=name)
    assert torch.equal(shared_adv[0], plain_adv[0])  # the first batch attacks the very same weights
    for ours, theirs in zip(shared_adv[1:], plain_adv[1:]):
        # Later batches attack weights that differ by rounding, and sign() turns an input-gradient
        # component within rounding of zero into a whole step (seen: 1 pixel of 256, s4-trades).
        assert (ours != theirs).float().mean() <= 0.02
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0.02)
    assert not torch.equal(shared_weights_after["encoder.weight"], small_model(arch).encoder.weight.detach())


def test_a_block_left_by_an_exception_sends_nothing_back_and_keeps_nothing() -> None:
    model = small_model("s4")
    with pytest.raises(RuntimeError, match="stop"), shared_weights(model):
        model(torch.rand(2, 1, 8, 8)).sum().backward()
        raise RuntimeError("stop")
    kernel_params = [p for name, p in model.named_parameters() if name.endswith("log_dt")]
    assert kernel_params and all(p.grad is None for p in kernel_params)  # the pending kernel gradient was dropped
    assert all(block.mixer.weight_cache._shared is None for block in model.blocks)
    model(torch.rand(2, 1, 8, 8)).sum().backward()  # plain training afterwards: gradients flow as usual
    assert all(p.grad is not None for p in kernel_params)
