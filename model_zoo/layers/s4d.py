"""S4D: a diagonal SSM with ZOH discretization, applied as a causal convolution (FFT, or direct for short L: layers/lti.py).

Each of the d_model channels is an independent SISO system with d_state/2 complex modes
(their conjugates are implied, so the kernel is real). A is initialized with S4D-Lin
(-1/2 + i pi n) or S4D-Inv (-1/2 + i N/pi (N/(2n+1) - 1)).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from model_zoo.errors import ZooError
from model_zoo.layers.base import log_dt_init, register_mixer
from model_zoo.layers.lti import LTIConvMixer


def s4d_init_imag(n_modes: int, d_state: int, init: str) -> torch.Tensor:
    """Imaginary parts of A for the S4D-Lin and S4D-Inv initializations."""
    n = torch.arange(n_modes, dtype=torch.float32)
    if init == "lin":
        return math.pi * n
    if init == "inv":
        return d_state / math.pi * (d_state / (2 * n + 1) - 1)
    raise ZooError(f"unknown S4D init {init!r}; choose lin or inv")


def zoh_diagonal_kernel(
    log_dt: torch.Tensor, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, length: int
) -> torch.Tensor:
    """K[h, l] = 2 Re sum_n C[h,n] * dB[h,n] * dA[h,n]^l with ZOH dA = exp(dt A), dB = (dA - 1)/A * B.

    The factor 2 Re accounts for the implied conjugate modes. The (H, N/2, L) Vandermonde part is
    evaluated in real arithmetic, Re(W e^{(p + iq) l}) = e^{p l} (Re W cos(q l) - Im W sin(q l)):
    that is exact, and real exp/cos/sin are several times cheaper than a complex exp on CPU.
    """
    dt_a = torch.exp(log_dt)[:, None] * a  # (H, N2)
    weights = c * (torch.exp(dt_a) - 1) / a * b
    steps = torch.arange(length, device=a.device, dtype=log_dt.dtype)
    decay = torch.exp(dt_a.real[..., None] * steps)  # (H, N2, L)
    phase = dt_a.imag[..., None] * steps
    return 2 * (torch.einsum("hn,hnl->hl", weights.real, decay * torch.cos(phase)) - torch.einsum("hn,hnl->hl", weights.imag, decay * torch.sin(phase)))


@register_mixer("s4d", causal=True)
class S4DMixer(LTIConvMixer):
    """S4D: diagonal SSM (S4D-Lin / S4D-Inv init), ZOH, causal convolution + D skip."""

    def __init__(self, d_model: int, d_state: int = 64, ads: str = "none", init: str = "lin") -> None:
        super().__init__(d_model, d_model, ads)
        n_modes = d_state // 2
        self.log_dt = nn.Parameter(log_dt_init(d_model))
        self.log_a_real = nn.Parameter(torch.log(0.5 * torch.ones(d_model, n_modes)))
        self.a_imag = nn.Parameter(s4d_init_imag(n_modes, d_state, init).repeat(d_model, 1))
        self.c = nn.Parameter(torch.randn(d_model, n_modes, 2) * math.sqrt(0.5))
        self.d = nn.Parameter(torch.randn(d_model))

    def discrete_system(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(dA, dB, C) per channel and mode: what a step-by-step recurrence would use."""
        a = torch.complex(-torch.exp(self.log_a_real), self.a_imag)
        dt_a = torch.exp(self.log_dt)[:, None] * a
        d_a = torch.exp(dt_a)
        return d_a, (d_a - 1) / a, torch.view_as_complex(self.c)

    def kernel(self, length: int) -> torch.Tensor:
        a = torch.complex(-torch.exp(self.log_a_real), self.a_imag)
        return zoh_diagonal_kernel(self.log_dt, a, torch.ones_like(a), torch.view_as_complex(self.c), length)
