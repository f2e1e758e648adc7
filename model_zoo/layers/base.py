"""The mixer contract and the mixer registry.

A mixer maps (B, L, d_model) -> (B, L, d_model). SSM mixers share one shape:
`core` produces the SSM output of width `d_inner`, AdS gates it, and `out_proj` maps it back to
d_model. Keeping those three as named submodules lets analysis hook the same components in
every architecture.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

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


class EvalCache:
    """Memoizes a function of a module's parameters while the module is in eval mode.

    Attacks run tens to thousands of forward/backward passes through frozen weights; an LTI
    SSM's convolution kernel depends only on the weights, so recomputing it every pass is waste.
    The key holds every parameter's storage address and version counter: an optimizer step or
    `load_state_dict` (both write in place) bumps the version, `.to(device)` changes the address,
    so a stale kernel is never served. In train mode nothing is cached and gradients flow to the
    parameters as usual; in eval mode the cached value is a constant (computed without autograd),
    which is what attacks need (input gradients only).
    """

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._value: Any = None

    def get(self, module: nn.Module, extra_key: tuple, compute: Callable[[], Any]) -> Any:
        if module.training:
            self._key = self._value = None
            return compute()
        key = (extra_key, tuple((p.data_ptr(), p._version) for p in module.parameters()))
        if key != self._key:
            with torch.no_grad():
                self._value = compute()
            self._key = key
        return self._value


class SSMMixer(nn.Module):
    """Base for SSM mixers: y = out_proj(ads(core(x))).

    Subclasses build their parameters and implement `core(x) -> (B, L, d_inner)`. LTI mixers
    implement `kernel(length) -> (H, L)` and call `causal_conv(u)`, which caches the kernel's
    spectrum in eval mode (EvalCache).
    """

    def __init__(self, d_model: int, d_inner: int, ads: str = "none") -> None:
        super().__init__()
        if ads not in ADS_CHOICES:
            raise ZooError(f"unknown AdS option {ads!r}; choose one of {', '.join(ADS_CHOICES)}")
        self.d_model = d_model
        self.d_inner = d_inner
        self.ads = build_ads(d_inner, ads)
        self.out_proj = nn.Linear(d_inner, d_model)
        self.eval_cache = EvalCache()

    def kernel(self, length: int) -> torch.Tensor:  # pragma: no cover - abstract for LTI mixers
        raise NotImplementedError(f"{type(self).__name__} is not a convolutional SSM")

    def causal_conv(self, u: torch.Tensor) -> torch.Tensor:
        """u (B, H, L) convolved causally with `kernel(L)`; the kernel spectrum is cached in eval mode."""
        length = u.shape[-1]
        n = fft_size(length)
        spectrum = self.eval_cache.get(
            self, ("conv", length, n, u.device, u.dtype), lambda: torch.fft.rfft(self.kernel(length).to(u.dtype), n=n)
        )
        return torch.fft.irfft(torch.fft.rfft(u, n=n) * spectrum, n=n)[..., :length]

    def core(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_proj(self.ads(self.core(x)))


def log_dt_init(n: int, dt_min: float = 1e-3, dt_max: float = 1e-1) -> torch.Tensor:
    """log dt ~ U[log dt_min, log dt_max], the paper's initialization for every SSM."""
    u = torch.rand(n)
    return u * (torch.log(torch.tensor(dt_max)) - torch.log(torch.tensor(dt_min))) + torch.log(torch.tensor(dt_min))


def fft_size(length: int) -> int:
    """FFT length for a causal convolution of `length` samples: 2L.

    Zero-padding to >= 2L - 1 makes the circular convolution causal. 2L is even and, for the
    lengths we use (64, 784, 1024, 3072, 4096), measured faster on CPU than the next 5-smooth size
    or the next power of two (L=784: 2L=1568 336 ms vs 1600 367 ms vs 2048 446 ms for a
    64x128 batch, rfft + irfft, one thread).
    """
    return 2 * length


def fft_causal_conv(u: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Causal convolution y[t] = sum_{s<=t} k[s] u[t-s] along the last axis via FFT.

    u: (..., H, L), k: (H, L) real.
    """
    length = u.shape[-1]
    n = fft_size(length)
    y = torch.fft.irfft(torch.fft.rfft(u, n=n) * torch.fft.rfft(k, n=n), n=n)
    return y[..., :length]
