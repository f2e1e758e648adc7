"""The mixer contract and the mixer registry.

A mixer maps (B, L, d_model) -> (B, L, d_model). SSM mixers share one shape:
`core` produces the SSM output of width `d_inner`, AdS gates it, and `out_proj` maps it back to
d_model. Keeping those three as named submodules lets analysis hook the same components in
every architecture.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from model_zoo.ads import ADS_CHOICES, build_ads
from model_zoo.errors import ZooError


@dataclass(frozen=True)
class MixerSpec:
    """What the registry knows about a mixer class."""

    name: str
    cls: type[nn.Module]
    causal: bool
    supports_ads: bool
    residual: bool
    description: str


MIXERS: dict[str, MixerSpec] = {}


def register_mixer(
    name: str, *, causal: bool, supports_ads: bool = True, residual: bool = True
) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator: make a mixer buildable by name.

    causal: output at t depends only on inputs up to t (tested for every causal mixer).
    supports_ads: the mixer has an SSM output for AdS to gate (all but Mega).
    residual: the block adds the input back (Mega mixes the input into its own update gate).
    """

    def decorate(cls: type[nn.Module]) -> type[nn.Module]:
        if name in MIXERS:
            raise ZooError(f"mixer {name!r} registered twice")
        doc = (cls.__doc__ or "").strip().splitlines()
        MIXERS[name] = MixerSpec(name, cls, causal, supports_ads, residual, doc[0] if doc else "")
        return cls

    return decorate


def get_mixer(name: str) -> MixerSpec:
    try:
        return MIXERS[name]
    except KeyError:
        raise ZooError(f"unknown architecture {name!r}; choose one of {', '.join(sorted(MIXERS))}") from None


class SSMMixer(nn.Module):
    """Base for SSM mixers: y = out_proj(ads(core(x))).

    Subclasses build their parameters and implement `core(x) -> (B, L, d_inner)`.
    """

    def __init__(self, d_model: int, d_inner: int, ads: str = "none") -> None:
        super().__init__()
        if ads not in ADS_CHOICES:
            raise ZooError(f"unknown AdS option {ads!r}; choose one of {', '.join(ADS_CHOICES)}")
        self.d_model = d_model
        self.d_inner = d_inner
        self.ads = build_ads(d_inner, ads)
        self.out_proj = nn.Linear(d_inner, d_model)

    def core(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_proj(self.ads(self.core(x)))


def log_dt_init(n: int, dt_min: float = 1e-3, dt_max: float = 1e-1) -> torch.Tensor:
    """log dt ~ U[log dt_min, log dt_max], the paper's initialization for every SSM."""
    u = torch.rand(n)
    return u * (torch.log(torch.tensor(dt_max)) - torch.log(torch.tensor(dt_min))) + torch.log(torch.tensor(dt_min))


def fft_causal_conv(u: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Causal convolution y[t] = sum_{s<=t} k[s] u[t-s] along the last axis via FFT.

    u: (..., H, L), k: (H, L) real. Zero-padding to 2L makes the circular convolution causal.
    """
    length = u.shape[-1]
    n = 2 * length
    y = torch.fft.irfft(torch.fft.rfft(u, n=n) * torch.fft.rfft(k, n=n), n=n)
    return y[..., :length]
