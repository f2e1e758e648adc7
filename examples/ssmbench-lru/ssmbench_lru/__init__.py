"""The Linear Recurrent Unit as an ssmbench mixer (Orvieto et al., 2023).

The recurrence is linear and time-invariant, so its output is a causal convolution of the input
projection with the powers of λ: the whole sequence is computed at once with an FFT of length 2L
instead of L sequential steps (the paper uses a parallel scan; both give the same values).
Subclassing `SSMMixer` gives it ssmbench's AdS gate and output projection like every built-in SSM.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from model_zoo.layers import register_mixer
from model_zoo.layers.base import SSMMixer

__version__ = "0.1.0"


@register_mixer("lru", causal=True)
class LRUMixer(SSMMixer):
    """LRU: a diagonal complex linear recurrence with exponential stable parameterization (plugin)."""

    def __init__(self, d_model: int, d_state: int = 64, ads: str = "none", r_min: float = 0.4, r_max: float = 0.99,
                 max_phase: float = 2 * math.pi) -> None:
        super().__init__(d_model, d_model, ads)
        # Ring initialization: |λ| uniform on [r_min, r_max] in area, phase uniform on [0, max_phase].
        u1, u2 = torch.rand(d_state), torch.rand(d_state)
        self.nu_log = nn.Parameter(torch.log(-0.5 * torch.log(u1 * (r_max**2 - r_min**2) + r_min**2)))
        self.theta_log = nn.Parameter(torch.log(max_phase * u2))
        magnitude = torch.exp(-torch.exp(self.nu_log.detach()))
        self.gamma_log = nn.Parameter(torch.log(torch.sqrt(1 - magnitude**2)))
        self.b = nn.Parameter(torch.randn(d_state, d_model, 2) / math.sqrt(2 * d_model))
        self.c = nn.Parameter(torch.randn(d_model, d_state, 2) / math.sqrt(d_state))
        self.d = nn.Parameter(torch.randn(d_model))

    def log_lambda(self) -> torch.Tensor:
        """log λ = -exp(ν) + i exp(θ): Re < 0, so |λ| < 1 for any parameter values."""
        return torch.complex(-torch.exp(self.nu_log), torch.exp(self.theta_log))

    def core(self, x: torch.Tensor) -> torch.Tensor:
        length = x.shape[1]
        b = torch.view_as_complex(self.b) * torch.exp(self.gamma_log)[:, None]
        v = torch.einsum("blh,nh->bln", x.to(b.dtype), b)  # (B, L, N): γ ⊙ B x_t
        steps = torch.arange(length, device=x.device, dtype=x.dtype)
        powers = torch.exp(steps[:, None] * self.log_lambda())  # (L, N): λ^l
        n = 2 * length  # linear, not circular, convolution
        h = torch.fft.ifft(torch.fft.fft(v, n=n, dim=1) * torch.fft.fft(powers, n=n, dim=0), dim=1)[:, :length]
        return (h @ torch.view_as_complex(self.c).T).real + self.d * x
