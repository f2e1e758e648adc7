"""Independent references shared by the S4 tests: dense complex recurrences, no kernel code."""

from __future__ import annotations

import torch


def with_conjugates(half: torch.Tensor) -> torch.Tensor:
    """The N/2 stored modes followed by their complex conjugates: the full N-mode system."""
    return torch.cat([half, half.conj()])


def bilinear_nplr_channel(
    lam: torch.Tensor, p: torch.Tensor, b: torch.Tensor, c_tilde: torch.Tensor, dt: torch.Tensor, d: torch.Tensor, u: torch.Tensor
) -> torch.Tensor:
    """One channel's output y_k = Re(C x_k) + D u_k of x_k = Abar x_{k-1} + Bbar u_k, step by step.

    A = diag(lam) - p p^* over the full N modes, bilinear: Abar = (I - dt/2 A)^-1 (I + dt/2 A),
    Bbar = (I - dt/2 A)^-1 dt B; the layer stores C~ = C (I - Abar^L), so C = C~ (I - Abar^L)^-1.
    u: (batch, L) real input of this channel.
    """
    length = u.shape[1]
    eye = torch.eye(lam.shape[0], dtype=lam.dtype)
    a = torch.diag(lam) - torch.outer(p, p.conj())
    back = torch.linalg.inv(eye - dt / 2 * a)
    a_bar, b_bar = back @ (eye + dt / 2 * a), back @ (dt * b)
    c = c_tilde @ torch.linalg.inv(eye - torch.linalg.matrix_power(a_bar, length))
    state = torch.zeros(u.shape[0], lam.shape[0], dtype=lam.dtype)
    out = torch.empty_like(u)
    for k in range(length):
        state = state @ a_bar.T + u[:, k, None] * b_bar
        y = state @ c
        assert y.imag.abs().max() < 1e-9, "the conjugate-paired system must be real"
        out[:, k] = y.real + d * u[:, k]
    return out
