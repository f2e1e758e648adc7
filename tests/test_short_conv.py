"""The direct (Toeplitz) causal convolution equals the FFT one in forward and backward, and the LTI
mixers pick it exactly at the lengths the measured rule says."""

from __future__ import annotations

import pytest
import torch

from model_zoo.layers import get_mixer, lti
from model_zoo.layers.lti import DIRECT_MAX_LENGTH, ToeplitzCausalConv, causal_conv, conv_algorithm, toeplitz_operator

LENGTHS = [1, 2, 5, 8, 31, 64, 100]


def direct(u: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    return causal_conv(u, k, "direct")


def loop_reference(u: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """y[..., t] = sum_{s<=t} k[:, s] u[..., t-s], one output step at a time."""
    length = u.shape[-1]
    steps = [sum(k[:, s] * u[..., t - s] for s in range(t + 1)) for t in range(length)]
    return torch.stack(steps, dim=-1)


@pytest.mark.parametrize("length", LENGTHS)
def test_direct_equals_fft_and_the_loop_in_the_forward_pass(length: int) -> None:
    generator = torch.Generator().manual_seed(length)
    u = torch.randn(3, 2, 4, length, dtype=torch.float64, generator=generator)  # extra leading axis
    k = torch.randn(4, length, dtype=torch.float64, generator=generator)
    expected = causal_conv(u, k, "fft")
    torch.testing.assert_close(direct(u, k), expected, rtol=1e-12, atol=1e-12)
    if length <= 31:
        torch.testing.assert_close(direct(u, k), loop_reference(u, k), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("length", LENGTHS)
def test_direct_backward_equals_fft_backward_and_passes_gradcheck(length: int) -> None:
    generator = torch.Generator().manual_seed(100 + length)
    u = torch.randn(2, 3, length, dtype=torch.float64, generator=generator, requires_grad=True)
    k = torch.randn(3, length, dtype=torch.float64, generator=generator, requires_grad=True)
    weight = torch.randn(2, 3, length, dtype=torch.float64, generator=generator)
    grads = {}
    for name in ("direct", "fft"):
        grads[name] = torch.autograd.grad((causal_conv(u, k, name) * weight).sum(), (u, k))
    for ours, theirs in zip(grads["direct"], grads["fft"]):
        torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-10)
    if length <= 64:
        assert torch.autograd.gradcheck(direct, (u, k))


def test_input_gradient_alone_matches_when_the_kernel_is_frozen() -> None:
    """The attack's case: the operator is a constant and only u gets a gradient."""
    u = torch.randn(2, 3, 12, dtype=torch.float64, requires_grad=True)
    k = torch.randn(3, 12, dtype=torch.float64)
    (ours,) = torch.autograd.grad(ToeplitzCausalConv.apply(u, k, toeplitz_operator(k)).square().sum(), u)
    (theirs,) = torch.autograd.grad(causal_conv(u, k, "fft").square().sum(), u)
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-10)


def test_the_rule_switches_at_the_measured_threshold() -> None:
    assert conv_algorithm(DIRECT_MAX_LENGTH).name == "direct"
    assert conv_algorithm(DIRECT_MAX_LENGTH + 1).name == "fft"
    assert conv_algorithm(784).name == "fft"


@pytest.mark.parametrize("arch", ["s4", "dss", "s4d"])
@pytest.mark.parametrize("length", [64, 65])
def test_lti_mixers_agree_under_both_algorithms(arch: str, length: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """A mixer (at the digits length, 64, and one past the threshold) gives the same output and
    input gradient whichever algorithm it uses, in train mode and frozen (eval) mode."""
    torch.manual_seed(0)
    mixer = get_mixer(arch).cls(8, d_state=4).double()
    x = torch.randn(2, length, 8, dtype=torch.float64, requires_grad=True)
    results = {}
    for name in ("direct", "fft"):
        monkeypatch.setattr(lti, "conv_algorithm", lambda _length, _name=name: lti.CONV_ALGORITHMS[_name])
        for train in (True, False):
            y = mixer.train(train)(x)
            (grad,) = torch.autograd.grad(y.square().sum(), x)
            results[name, train] = (y.detach(), grad)
    for train in (True, False):
        for ours, theirs in zip(results["direct", train], results["fft", train]):
            torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("arch", ["s4", "dss", "s4d"])
@pytest.mark.parametrize("length", [8, 65])
def test_the_skip_term_folded_into_the_lag0_tap_equals_k_conv_u_plus_d_u(arch: str, length: int) -> None:
    """core(x) convolves with K' = K + D e_0; it must equal K * u + D u written out, and D's
    gradient must be the one of the explicit sum (float64, both algorithms: L 8 direct, 65 FFT)."""
    torch.manual_seed(0)
    mixer = get_mixer(arch).cls(6, d_state=4).double()
    x = torch.randn(3, length, 6, dtype=torch.float64)
    u = x.transpose(1, 2)
    explicit = (loop_reference(u, mixer.kernel(length)) + mixer.d[:, None] * u).transpose(1, 2)
    ours = mixer.core(x)
    torch.testing.assert_close(ours, explicit, rtol=1e-10, atol=1e-12)
    weight = torch.randn_like(ours)
    (grad_d,) = torch.autograd.grad((ours * weight).sum(), mixer.d)
    (expected_d,) = torch.autograd.grad((explicit * weight).sum(), mixer.d)
    torch.testing.assert_close(grad_d, expected_d, rtol=1e-10, atol=1e-12)
