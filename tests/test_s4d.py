"""S4D against its step-by-step recurrence, and its two initializations in closed form."""

from __future__ import annotations

import math

import pytest
import torch

from model_zoo.layers.s4d import S4DMixer


@pytest.mark.parametrize("init", ["lin", "inv"])
def test_fft_convolution_equals_the_recurrence(init: str) -> None:
    torch.manual_seed(0)
    mixer = S4DMixer(d_model=3, d_state=8, init=init).double()
    with torch.no_grad():  # move away from the init so that every parameter matters
        for param in mixer.parameters():
            param.add_(0.1 * torch.randn_like(param))
    u = torch.randn(2, 40, 3, dtype=torch.float64)
    d_a, d_b, c = mixer.discrete_system()  # (H, N/2) each
    state = torch.zeros(2, 3, d_a.shape[1], dtype=torch.complex128)
    expected = []
    for t in range(u.shape[1]):
        state = d_a * state + d_b * u[:, t, :, None]
        expected.append(2 * (c * state).sum(-1).real + mixer.d * u[:, t])
    expected = torch.stack(expected, dim=1)
    torch.testing.assert_close(mixer.core(u), expected, rtol=1e-4, atol=1e-8)


def test_initializations_match_the_s4d_paper() -> None:
    lin = S4DMixer(d_model=2, d_state=8, init="lin")
    inv = S4DMixer(d_model=2, d_state=8, init="inv")
    n = torch.arange(4, dtype=torch.float32)
    torch.testing.assert_close(lin.a_imag[1], math.pi * n)
    torch.testing.assert_close(inv.a_imag[0], 8 / math.pi * (8 / (2 * n + 1) - 1))
    torch.testing.assert_close(-torch.exp(lin.log_a_real), torch.full((2, 4), -0.5))
