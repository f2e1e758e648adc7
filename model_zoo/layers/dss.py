"""DSS: Diagonal State Spaces (Gupta, Gu & Berant, 2022) with the exp-normalized ("softmax") kernel.

Each channel h has the kernel K[h, l] = Re sum_n W[h,n] / Lambda_n * exp(dt_h Lambda_n l) / S[h,n],
S[h,n] = sum_{r<L} exp(dt_h Lambda_n r): the paper's DSS_softmax (Proposition 1b), i.e. W Lambda^-1
times the row-softmax of P[n, l] = dt Lambda_n l. Normalizing over the length lets Re(Lambda) take
either sign without the kernel blowing up, so Lambda is unconstrained. Lambda (N/2 modes, shared by
all channels as in the paper) starts at the eigenvalues of the normal part of HiPPO-LegS; W absorbs
the factor 2 of the implied conjugate modes.

The seed study ran DSS as the `mode="diag"` (`disc="dss"`) kernel of the state-spaces code it
vendors. Against it this layer's defaults differ in two ways that leave the parameter count alone,
and both are options (`mixer_options={"w_init": "legs_b", "detach_max": True}` is that model):
W's initialization (there W = C B with C ~ CN(0, 1) and B the LegS input vector in the eigenbasis,
here W ~ N(0, 1) per real part) and the max-shift of a growing mode's softmax, which the released
code computes under no_grad (a biased gradient for Re(Lambda) > 0; here the true one by default).
The DSS reference (ag1988/dss) also offers a separate dt for the real and the imaginary part of
Lambda (`sep_dt_re_im`, x = dt_re Re(Lambda) + i dt_im Im(Lambda), both started at the same value);
the study's state-spaces kernel ties them (one dt per channel), which is this layer's default, and
`sep_dt_re_im=True` is the reference's other mode (d_model more parameters per layer).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from model_zoo.errors import ZooError
from model_zoo.layers.base import log_dt_init, register_mixer
from model_zoo.layers.lti import LTIConvMixer
from model_zoo.layers.s4 import legs_nplr


def dss_softmax_kernel(
    dt: torch.Tensor, lam: torch.Tensor, w: torch.Tensor, length: int, detach_max: bool = False
) -> torch.Tensor:
    """Real DSS_softmax kernel (H, length) for dt (H,) or (H, 2), Lambda (N/2,), W (H, N/2).

    The softmax is evaluated in closed form, stably for both signs of Re(x), x = dt Lambda:
    Re(x) <= 0: exp(x l) / S with 1/S = expm1(x) / expm1(x L);
    Re(x) > 0:  divide numerator and S by exp(x (L-1)), which turns S into the decaying sum
                sum_r exp(-x r); the numerator becomes exp(x (l - L + 1)), at most 1 in modulus.
    expm1 keeps 1/S accurate when |x L| is small (dt 1e-3 at short L).
    The value does not depend on the shift; its gradient does when the shift is detached
    (detach_max, as the released code does): then the -(L-1) term of d shift / dx is dropped.
    """
    x = dss_rates(dt, lam)  # (H, N/2)
    growing = x.real > 0
    decaying = torch.where(growing, -x, x)
    inv_sum = torch.expm1(decaying) / torch.expm1(decaying * length)
    shift = torch.where(growing, x * (length - 1), torch.zeros_like(x))
    if detach_max:
        shift = shift.detach()
    return real_vandermonde(w / lam * inv_sum, x, shift, length)


def dss_rates(dt: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """x = dt Lambda (H, N/2): dt (H,) scales both parts; dt (H, 2) scales Re and Im apart (sep_dt_re_im)."""
    if dt.dim() == 1:
        return dt[:, None] * lam
    return torch.complex(dt[:, :1] * lam.real, dt[:, 1:] * lam.imag)


def real_vandermonde(coef: torch.Tensor, x: torch.Tensor, shift: torch.Tensor, length: int) -> torch.Tensor:
    """Re sum_n coef[h,n] exp(x[h,n] l - shift[h,n]) for l < length, (H, length), in real arithmetic.

    Re(c e^{a + ib}) = e^a (Re c cos b - Im c sin b): three real transcendentals on (H, N/2, L)
    run ~1.7x faster forward+backward on CPU than one complex exp, with the same result. The shift
    stays inside the exponent: split off into coef, exp(a l) of a growing mode would overflow.
    """
    positions = torch.arange(length, dtype=x.real.dtype, device=x.device)
    # Real and imaginary parts built separately: slicing a complex (H, N/2, L) product costs more.
    growth = torch.exp(x.real[..., None] * positions - shift.real[..., None])
    phase = x.imag[..., None] * positions - shift.imag[..., None]
    basis = torch.cat([growth * torch.cos(phase), growth * torch.sin(phase)], dim=1)  # (H, N, L)
    weights = torch.cat([coef.real, -coef.imag], dim=1)  # (H, N)
    return torch.einsum("hn,hnl->hl", weights, basis)


def _w_normal(d_model: int, b: torch.Tensor) -> torch.Tensor:
    """W ~ N(0, 1) in each real part (ssmbench's original DSS)."""
    return torch.randn(d_model, b.shape[0], 2)


def _w_legs_b(d_model: int, b: torch.Tensor) -> torch.Tensor:
    """W = C B, C ~ CN(0, 1), B = V^* B_LegS: the released code's C init in mode='diag'."""
    c = torch.randn(d_model, b.shape[0], dtype=torch.complex64)
    return torch.view_as_real(c * b.to(torch.complex64))


W_INITS = {"normal": _w_normal, "legs_b": _w_legs_b}


@register_mixer("dss", causal=True)
class DSSMixer(LTIConvMixer):
    """DSS: diagonal SSM (HiPPO-LegS normal-part init), exp-normalized kernel, causal conv + D skip."""

    def __init__(
        self,
        d_model: int,
        d_state: int = 64,
        ads: str = "none",
        *,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        w_init: str = "normal",
        detach_max: bool = False,
        sep_dt_re_im: bool = False,
    ) -> None:
        super().__init__(d_model, d_model, ads)
        if w_init not in W_INITS:
            raise ZooError(f"unknown DSS w_init {w_init!r}; choose one of {', '.join(W_INITS)}")
        if not isinstance(detach_max, bool):
            raise ZooError(f"DSS detach_max must be true or false, got {detach_max!r}")
        if not isinstance(sep_dt_re_im, bool):
            raise ZooError(f"DSS sep_dt_re_im must be true or false, got {sep_dt_re_im!r}")
        self.detach_max = detach_max
        init = legs_nplr(d_state)
        log_dt = log_dt_init(d_model, dt_min, dt_max)
        self.log_dt = nn.Parameter(log_dt[:, None].repeat(1, 2) if sep_dt_re_im else log_dt)
        self.lam = nn.Parameter(torch.view_as_real(init.lam.to(torch.complex64)).clone())
        self.w = nn.Parameter(W_INITS[w_init](d_model, init.b))
        self.d = nn.Parameter(torch.randn(d_model))

    @staticmethod
    def variant_name(options: dict[str, Any]) -> str:
        """'released' for the seed study's configuration, else the non-default options, else ''."""
        b_init, detached = options.get("w_init", "normal") == "legs_b", options.get("detach_max", False) is True
        separate = ["separate dt re/im"] * (options.get("sep_dt_re_im", False) is True)
        if b_init and detached:
            return ", ".join(["released", *separate])
        return ", ".join(["W=CB init"] * b_init + ["detached max"] * detached + separate)

    def diagonal_system(self) -> dict[str, torch.Tensor]:
        """dt (H,) or (H, 2) with sep_dt_re_im, Lambda (N/2,) and W (H, N/2) that define the kernel."""
        return {
            "dt": torch.exp(self.log_dt),
            "lam": torch.view_as_complex(self.lam),
            "w": torch.view_as_complex(self.w),
        }

    def kernel(self, length: int) -> torch.Tensor:
        return dss_softmax_kernel(**self.diagonal_system(), length=length, detach_max=self.detach_max)
