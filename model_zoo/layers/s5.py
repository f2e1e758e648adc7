"""S5: one MIMO diagonal SSM over all d_model channels (Smith et al., 2023).

    x_k = Lambda_bar x_{k-1} + B_bar u_k,    y_k = 2 Re(C x_k) + D u_k

with P = d_state complex states kept as P/2 modes (the other half are their conjugates, which is
what the 2 Re accounts for). Lambda starts at the eigenvalues of HiPPO-N, the normal part of
HiPPO-LegS, and B and C start as random real matrices written in its eigenvector basis
(B = V^-1 B_real, C = C_real V), as in the paper. Each state has its own step size, discretized with
zero-order hold.

Why an FFT convolution rather than a parallel scan: the system is time-invariant, so the state
sequence is the causal convolution of B_bar u with the per-state kernel Lambda_bar^l. One FFT over
2L samples per (sequence, state) computes it with O(L log L) work in a handful of large, fully
vectorized calls, with no loop at all; a scan would need log-depth passes over the same
(B, L, P/2) complex tensor. The kernel powers have modulus exp(dt Re Lambda)^l <= 1, so nothing
grows. Measured on a 2-core CPU (MNIST preset, L = 784, batch 64, fwd+bwd), this path runs level
with the step-by-step recurrence (0.98x, `ssmbench bench mixers`): the (B, 2L, P/2) complex FFTs
cost as much as the loop saves there, unlike S4/DSS/S4D whose kernels need no per-state FFT.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from model_zoo.errors import ZooError
from model_zoo.layers.base import SSMMixer, fft_size, log_dt_init, register_mixer


def hippo_legs(n: int) -> torch.Tensor:
    """The HiPPO-LegS state matrix (float64): -sqrt((2i+1)(2j+1)) below the diagonal, -(i+1) on it."""
    q = torch.sqrt(2 * torch.arange(n, dtype=torch.float64) + 1)
    return -torch.tril(q[:, None] * q[None, :], diagonal=-1) - torch.diag(torch.arange(1, n + 1, dtype=torch.float64))


def hippo_n_eigenbasis(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues and eigenvectors of HiPPO-N = LegS + p p^T with p_i = sqrt(i + 1/2).

    HiPPO-N = -I/2 + S with S skew-symmetric, so its eigenvalues are -1/2 + i w where i w are the
    eigenvalues of S; eigh of the Hermitian -iS gives w and an orthonormal V. Returns the n/2
    eigenvalues with w > 0 (complex128, ascending w) and their eigenvectors V (n, n/2); the
    other half are the conjugates.
    """
    if n < 2 or n % 2:
        raise ZooError(f"S5 needs an even d_state >= 2 (conjugate pairs), got {n}")
    p = torch.sqrt(torch.arange(n, dtype=torch.float64) + 0.5)
    normal = hippo_legs(n) + p[:, None] * p[None, :]
    skew = normal + 0.5 * torch.eye(n, dtype=torch.float64)
    w, v = torch.linalg.eigh(-1j * skew.to(torch.complex128))
    upper = slice(n // 2, n)
    return torch.complex(torch.full((n // 2,), -0.5, dtype=torch.float64), w[upper]), v[:, upper]


@register_mixer("s5", causal=True)
class S5Mixer(SSMMixer):
    """S5: MIMO diagonal SSM (HiPPO-N eigenbasis init), per-state ZOH, FFT convolution + D skip."""

    def __init__(self, d_model: int, d_state: int = 128, ads: str = "none") -> None:
        super().__init__(d_model, d_model, ads)
        eigenvalues, v = hippo_n_eigenbasis(d_state)
        n_modes = d_state // 2
        # Complex parameters are stored as real (..., 2) views (the checkpoint contract).
        # Re(Lambda) = -exp(.) keeps every mode stable however training moves it.
        self.log_neg_lambda_real = nn.Parameter(torch.log(-eigenvalues.real).float())
        self.lambda_imag = nn.Parameter(eigenvalues.imag.float())
        b_real = torch.randn(d_state, d_model, dtype=torch.float64) / math.sqrt(d_model)
        c_real = torch.randn(d_model, d_state, dtype=torch.float64) / math.sqrt(d_state)
        self.b = nn.Parameter(torch.view_as_real(v.conj().T @ b_real.to(v.dtype)).float())  # (P/2, H, 2)
        self.c = nn.Parameter(torch.view_as_real(c_real.to(v.dtype) @ v).float())  # (H, P/2, 2)
        self.log_dt = nn.Parameter(log_dt_init(n_modes))
        self.d = nn.Parameter(torch.randn(d_model))

    def eigenvalues(self) -> torch.Tensor:
        """Continuous-time Lambda (P/2,) complex."""
        return torch.complex(-torch.exp(self.log_neg_lambda_real), self.lambda_imag)

    def _zoh(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(dt Lambda, B_bar): the discretized system's log-eigenvalues and input matrix."""
        lam = self.eigenvalues()
        dt_lam = torch.exp(self.log_dt) * lam
        return dt_lam, ((torch.exp(dt_lam) - 1) / lam)[:, None] * torch.view_as_complex(self.b)

    def discrete_system(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(Lambda_bar (P/2,), B_bar (P/2, H), C (H, P/2), D (H,)) as a step-by-step recurrence uses them.

        ZOH: Lambda_bar = exp(dt Lambda), B_bar = (Lambda_bar - 1) / Lambda * B.
        """
        dt_lam, b_bar = self._zoh()
        return torch.exp(dt_lam), b_bar, torch.view_as_complex(self.c), self.d

    def _state_operators(self, length: int, n: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B_bar (P/2, H), spectrum of Lambda_bar^l zero-padded to n (n, P/2)): weights only."""
        dt_lam, b_bar = self._zoh()
        steps = torch.arange(length, device=x.device, dtype=x.dtype)
        kernel = torch.exp(steps[:, None] * dt_lam)  # (L, P/2)
        return b_bar, torch.fft.fft(kernel, n=n, dim=0)

    def core(self, x: torch.Tensor) -> torch.Tensor:
        c = torch.view_as_complex(self.c)
        length = x.shape[1]
        n = fft_size(length)
        b_bar, kernel_spectrum = self.weight_cache.get(
            self, ("s5", length, n, x.device, x.dtype), lambda: self._state_operators(length, n, x)
        )
        # B_bar u as two real matmuls (u is real), then the causal convolution along time (dim 1)
        # with Lambda_bar^l = exp(l dt Lambda), zero-padded so that it is not circular.
        bu = torch.complex(x @ b_bar.real.T, x @ b_bar.imag.T)  # (B, L, P/2)
        spectrum = torch.fft.fft(bu, n=n, dim=1) * kernel_spectrum
        states = torch.fft.ifft(spectrum, n=n, dim=1)[:, :length]
        return 2 * (states.real @ c.real.T - states.imag @ c.imag.T) + self.d * x
