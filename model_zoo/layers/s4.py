"""S4: the DPLR (NPLR) state space model of Gu et al. (2022), applied as a causal convolution (FFT, or direct for short L: layers/lti.py).

Each of the d_model channels is an independent SISO system x' = A x + B u, y = Re(C x) whose
A = Lambda - P P^* is diagonal plus rank one in the eigenbasis of the normal part of HiPPO-LegS.
Only N/2 of the N modes are stored: the rest are their complex conjugates, which keeps the system
equivalent to a real one and the kernel real.

The kernel is Algorithm 1 of the S4 paper: evaluate the truncated generating function of the
bilinear-discretized system at the L-th roots of unity with Cauchy sums and the Woodbury identity,
then inverse FFT. The parameter C is the paper's C~ = C (I - Abar^L): learning C~ directly saves
the matrix power, and the recurrence with C = C~ (I - Abar^L)^-1 has exactly this kernel.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from model_zoo.errors import ZooError
from model_zoo.layers.base import log_dt_init, register_mixer
from model_zoo.layers.lti import LTIConvMixer


@dataclass(frozen=True)
class LegsNPLR:
    """HiPPO-LegS as normal plus low rank, in the eigenbasis of its normal part, half the modes.

    With V = [v, conj(v)] (unitary), Lambda = [lam, conj(lam)], p~ = [p, conj(p)], b~ = [b, conj(b)]:
    A_LegS = V (Lambda - p~ p~^*) V^*  and  B_LegS = V b~. All tensors are complex128.
    """

    lam: torch.Tensor  # (N/2,) eigenvalues with positive imaginary part
    p: torch.Tensor  # (N/2,) V^* P for the low-rank factor P_n = sqrt(n + 1/2)
    b: torch.Tensor  # (N/2,) V^* B for B_n = sqrt(2n + 1)
    v: torch.Tensor  # (N, N/2) eigenvectors of the normal part


def legs_nplr(d_state: int) -> LegsNPLR:
    """Decompose HiPPO-LegS (size d_state) as S - P P^T with S = -I/2 + skew-symmetric.

    A_LegS[n, k] = -sqrt((2n+1)(2k+1)) below the diagonal and -(n+1) on it; adding P P^T with
    P_n = sqrt(n + 1/2) leaves -1/2 on the diagonal and +-sqrt((2n+1)(2k+1))/2 off it, a normal
    matrix. Its skew part is diagonalized through the Hermitian matrix -i * skew (eigh is stable
    and returns orthonormal vectors). The eigenvalues come in distinct +-i mu pairs (no zeros for
    any even size), so keeping mu > 0 keeps one mode of each conjugate pair.
    """
    if d_state < 2 or d_state % 2:
        raise ZooError(f"S4/DSS need an even d_state >= 2, got {d_state}")
    n = torch.arange(d_state, dtype=torch.float64)
    root = torch.sqrt(2 * n + 1)
    lower = torch.tril(0.5 * root[:, None] * root[None, :], diagonal=-1)
    skew = lower.T - lower
    mu, vectors = torch.linalg.eigh(-1j * skew.to(torch.complex128))
    v = vectors[:, d_state // 2 :]  # eigh sorts ascending: the upper half has mu > 0
    lam = torch.complex(torch.full((d_state // 2,), -0.5, dtype=torch.float64), mu[d_state // 2 :])
    v_h = v.conj().T
    p = v_h @ torch.sqrt(n + 0.5).to(torch.complex128)
    b = v_h @ root.to(torch.complex128)
    return LegsNPLR(lam=lam, p=p, b=b, v=v)


def conj_pair_cauchy(
    weights: torch.Tensor, lam: torch.Tensor, denominator_of: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """sum_n w_n / den(lam_n) + conj(w_n) / den(conj(lam_n)): a Cauchy sum over all N modes.

    weights: (..., H, N/2); lam: (H, N/2); denominator_of(lam) -> (H, N/2, F). Returns (..., H, F).
    The conjugate half is summed explicitly because den is evaluated at complex z, where the two
    halves are not conjugates of each other.
    """
    own = torch.einsum("...hn,hnf->...hf", weights, 1 / denominator_of(lam))
    partner = torch.einsum("...hn,hnf->...hf", weights.conj(), 1 / denominator_of(lam.conj()))
    return own + partner


def nplr_bilinear_kernel(
    dt: torch.Tensor, lam: torch.Tensor, p: torch.Tensor, b: torch.Tensor, c_tilde: torch.Tensor, length: int
) -> torch.Tensor:
    """Real kernel (H, length) of the bilinear-discretized x' = (Lambda - P P^*) x + B u, y = C~ x.

    At z on the unit circle, sum_{l<L} K_l z^l = C~ (I - z Abar)^-1 Bbar (because z^L = 1), and
    (I - z Abar)^-1 Bbar = 2 M(z)^-1 B with M(z) = (2/dt)(1 - z) I - (1 + z) A. This is the
    paper's 2/(1+z) (g(z) - A)^-1 B, g = (2/dt)(1-z)/(1+z), multiplied through by (1 + z) so that
    z = -1 (the Nyquist bin of even L) stays finite. M = D + (1 + z) P P^* with D diagonal, and
    Woodbury gives C~ M^-1 B = k00 - (1 + z) k01 k10 / (1 + (1 + z) k11), each k a Cauchy sum.
    Only the L//2 + 1 non-negative frequencies are needed: K is real, so irfft recovers it.
    """
    freqs = length // 2 + 1
    angle = torch.arange(freqs, dtype=dt.dtype, device=dt.device) * (-2 * math.pi / length)
    z = torch.polar(torch.ones_like(angle), angle)  # z_k = exp(-2 pi i k / L): rfft's convention
    one_minus = (2 / dt)[:, None, None] * (1 - z)  # (H, 1, F)
    one_plus = 1 + z  # (F,)

    def denominator_of(eig: torch.Tensor) -> torch.Tensor:
        return one_minus - one_plus * eig[..., None]

    p_conj = p.conj()
    weights = torch.stack([c_tilde * b, c_tilde * p, p_conj * b, p_conj * p])  # (4, H, N/2)
    k00, k01, k10, k11 = conj_pair_cauchy(weights, lam, denominator_of)
    spectrum = 2 * (k00 - one_plus * k01 * k10 / (1 + one_plus * k11))
    return torch.fft.irfft(spectrum, n=length)


@register_mixer("s4", causal=True)
class S4Mixer(LTIConvMixer):
    """S4: DPLR SSM from HiPPO-LegS (rank 1), bilinear, Cauchy + Woodbury kernel, causal conv + D skip.

    n_ssm and train_real are state-spaces' knobs (its `n_ssm` and `trainable={"A": ...}`, read in
    `HippoSSKernel` / `SSKernelNPLR` of the V2.1 code that the seed study vendors). n_ssm copies of
    (Lambda, P, B) are stored and broadcast over the d_model channels the way state-spaces repeats
    them (channel h uses copy h % n_ssm); None keeps one copy per channel. dt, C~ and D are always
    per channel. train_real=False keeps Re(Lambda) at its HiPPO value (a buffer) and trains only
    Im(Lambda). The released model the study ran is n_ssm=1, train_real=False: 44,202 parameters at
    the MNIST preset against 68,618 with the defaults.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 64,
        ads: str = "none",
        *,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        n_ssm: int | None = None,
        train_real: bool = True,
    ) -> None:
        super().__init__(d_model, d_model, ads)
        copies = d_model if n_ssm is None else n_ssm
        if not isinstance(copies, int) or isinstance(copies, bool) or copies < 1 or d_model % copies:
            raise ZooError(f"S4 n_ssm must be a positive divisor of d_model ({d_model}), got {n_ssm!r}")
        self.n_ssm = copies
        init = legs_nplr(d_state)
        n_modes = d_state // 2

        def stored(values: torch.Tensor) -> torch.Tensor:
            return values.to(torch.complex64).repeat(copies, 1)

        self.log_dt = nn.Parameter(log_dt_init(d_model, dt_min, dt_max))
        # Re(Lambda) = -exp(.) < 0 keeps A stable: -P P^* only moves A's numerical range left.
        log_neg_real = torch.log(-stored(init.lam).real)
        if train_real:
            self.log_neg_lambda_real = nn.Parameter(log_neg_real)
        else:
            self.register_buffer("log_neg_lambda_real", log_neg_real)
        self.lambda_imag = nn.Parameter(stored(init.lam).imag.clone())
        self.p = nn.Parameter(torch.view_as_real(stored(init.p)).clone())
        self.b = nn.Parameter(torch.view_as_real(stored(init.b)).clone())
        self.c = nn.Parameter(torch.randn(d_model, n_modes, 2) * math.sqrt(0.5))
        self.d = nn.Parameter(torch.randn(d_model))

    @staticmethod
    def variant_name(options: dict[str, Any]) -> str:
        """'released' for the seed study's parameterization, else the non-default options, else ''."""
        n_ssm, fixed = options.get("n_ssm"), options.get("train_real", True) is False
        if n_ssm == 1 and fixed:
            return "released"
        return ", ".join([f"n_ssm={n_ssm}"] * (n_ssm is not None) + ["fixed Re"] * fixed)

    def nplr_system(self) -> dict[str, torch.Tensor]:
        """dt (H,) and the half-mode Lambda, P, B, C~ (H, N/2) that define the kernel."""
        copies = self.d_model // self.n_ssm

        def per_channel(values: torch.Tensor) -> torch.Tensor:
            return values.repeat(copies, 1)  # state-spaces' '(v t)' order: channel h <- copy h % n_ssm

        return {
            "dt": torch.exp(self.log_dt),
            "lam": per_channel(torch.complex(-torch.exp(self.log_neg_lambda_real), self.lambda_imag)),
            "p": per_channel(torch.view_as_complex(self.p)),
            "b": per_channel(torch.view_as_complex(self.b)),
            "c_tilde": torch.view_as_complex(self.c),
        }

    def kernel(self, length: int) -> torch.Tensor:
        return nplr_bilinear_kernel(**self.nplr_system(), length=length)
