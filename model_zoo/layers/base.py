"""The mixer contract and the mixer registry.

A mixer maps (B, L, d_model) -> (B, L, d_model). SSM mixers share one shape:
`core` produces the SSM output of width `d_inner`, AdS gates it, and `out_proj` maps it back to
d_model. Keeping those three as named submodules lets analysis hook the same components in
every architecture.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from model_zoo.ads import ADS_CHOICES, build_ads
from model_zoo.errors import ZooError
from model_zoo.frozen import WeightCache
from model_zoo.registries import Registry


@dataclass(frozen=True)
class MixerSpec:
    """What the registry knows about a mixer class."""

    name: str
    cls: type[nn.Module]
    causal: bool
    supports_ads: bool
    residual: bool
    description: str
    row_blocks: bool = True


MIXERS: Registry[MixerSpec] = Registry("architecture", ZooError)


def register_mixer(
    name: str, *, causal: bool, supports_ads: bool = True, residual: bool = True, row_blocks: bool = True
) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator: make a mixer buildable by name.

    causal: output at t depends only on inputs up to t (tested for every causal mixer).
    supports_ads: the mixer has an SSM output for AdS to gate (all but Mega).
    residual: the block adds the input back (Mega mixes the input into its own update gate).
    row_blocks: passes through frozen weights may run in blocks of batch rows
    (model_zoo/classifier.py); Mamba's scan tiles the batch itself and measured slower in blocks.
    """

    def spec(cls: type[nn.Module]) -> MixerSpec:
        doc = (cls.__doc__ or "").strip().splitlines()
        return MixerSpec(name, cls, causal, supports_ads, residual, doc[0] if doc else "", row_blocks)

    return MIXERS.register(name, spec)


def get_mixer(name: str) -> MixerSpec:
    """The registered mixer `name`; on a miss, an installed plugin that declares it is imported first."""
    from model_zoo import plugins  # plugins needs this registry; importing it here avoids the cycle

    if name not in MIXERS and not plugins.load_mixer(name):
        known = sorted({*MIXERS, *plugins.available()})
        raise ZooError(f"unknown architecture {name!r}; choose one of {', '.join(known)}")
    return MIXERS[name]


class SSMMixer(nn.Module):
    """Base for SSM mixers: y = out_proj(ads(core(x))).

    Subclasses build their parameters and implement `core(x) -> (B, L, d_inner)`; the LTI
    convolution mixers share theirs (`LTIConvMixer`, model_zoo/layers/lti.py). `weight_cache`
    holds weight-only quantities while the weights are frozen (model_zoo/frozen.py).
    """

    def __init__(self, d_model: int, d_inner: int, ads: str = "none") -> None:
        super().__init__()
        if ads not in ADS_CHOICES:
            raise ZooError(f"unknown AdS option {ads!r}; choose one of {', '.join(ADS_CHOICES)}")
        self.d_model = d_model
        self.d_inner = d_inner
        self.ads = build_ads(d_inner, ads)
        self.out_proj = nn.Linear(d_inner, d_model)
        self.weight_cache = WeightCache()

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


# Floats of zero-padded input per block of `FFTCausalConv` (2 MiB): the transforms of a whole
# batch at once (B x H x 2L floats, 51 MB complex at the MNIST preset) stream through memory several
# times per pass; block by block, the rfft, the spectral product and the irfft of one block run
# while it is in cache. Measured (2-core Intel Xeon, torch 2.13 CPU, 2 threads, B 64, H 128, L 784,
# the convolution alone, medians of 5 interleaved rounds, study runners paused): forward + backward
# 75 ms blocked (4 batch rows per block, 3.2 MB) vs 161 ms whole-batch (0.47x); with the input
# gradient only (the attacks) 49 vs 125 ms (0.39x). Blocks of 1 to 4 rows measured alike (0.44x to
# 0.49x), 16 rows 0.62x. Outputs and input gradients are bit-identical to the whole-batch
# transforms (each line's FFT is the same computation); the kernel gradient sums the batch
# block by block, equal up to float rounding (1.8e-7 relative).
FFT_BLOCK_FLOATS = 1 << 19


def fft_block_rows(channels: int, n: int) -> int:
    """Rows of the flattened batch per block: as many as fit FFT_BLOCK_FLOATS padded floats, at least 1."""
    return max(1, FFT_BLOCK_FLOATS // (channels * n))


class FFTCausalConv(torch.autograd.Function):
    """y = u causally convolved with k along the last axis, through real FFTs of size n >= 2L - 1,
    with a hand-written backward, a block of batch rows at a time (FFT_BLOCK_FLOATS).

    Why not autograd: its backward of `rfft` is a full-length complex FFT plus zero-padding
    bookkeeping, about a third of a whole PGD step on S4D (torch profiler, digits preset). The
    adjoint of a causal convolution is a causal correlation, which in the frequency domain is a
    product with the conjugate spectrum: one rfft of the output gradient and one irfft per input
    gradient. `k_spectrum` is rfft(k, n), passed in so that eval mode can cache it; it is treated
    as a function of k (its gradient goes to k), never differentiated itself. For the kernel
    gradient the backward recomputes each block's input spectrum instead of keeping the whole
    batch's (a cached block's rfft costs less than reading a saved complex tensor twice its size).

    u: (..., H, L) real; k: (H, L) real; k_spectrum: (H, n // 2 + 1) complex.
    """

    @staticmethod
    def forward(ctx: Any, u: torch.Tensor, k: torch.Tensor, k_spectrum: torch.Tensor, n: int) -> torch.Tensor:
        shape = u.shape
        rows_u = u.reshape(-1, *shape[-2:])
        y = rows_u.new_empty(rows_u.shape)
        step = fft_block_rows(shape[-2], n)
        for start in range(0, len(rows_u), step):
            block = torch.fft.rfft(rows_u[start:start + step], n=n)
            y[start:start + step] = torch.fft.irfft(block * k_spectrum, n=n)[..., :shape[-1]]
        ctx.n = n
        ctx.shape = shape
        ctx.save_for_backward(k_spectrum, rows_u if ctx.needs_input_grad[1] else None)
        return y.view(shape)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_y: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None, None]:
        k_spectrum, rows_u = ctx.saved_tensors
        shape, n = ctx.shape, ctx.n
        length = shape[-1]
        rows_g = grad_y.reshape(-1, *shape[-2:])
        grad_u = rows_g.new_empty(rows_g.shape) if ctx.needs_input_grad[0] else None
        cross = torch.zeros_like(k_spectrum) if ctx.needs_input_grad[1] else None
        k_adjoint = k_spectrum.conj().resolve_conj()  # a lazy conj would be resolved in every block
        step = fft_block_rows(shape[-2], n)
        for start in range(0, len(rows_g), step):
            rows = slice(start, start + step)
            g = torch.fft.rfft(rows_g[rows], n=n)
            if grad_u is not None:  # dL/du[s] = sum_{t>=s} g[t] k[t-s]
                grad_u[rows] = torch.fft.irfft(g * k_adjoint, n=n)[..., :length]
            if cross is not None:  # dL/dk[j] = sum_t g[t] u[t-j], summed over the batch
                cross += (g * torch.fft.rfft(rows_u[rows], n=n).conj()).sum(0)
        grad_k = torch.fft.irfft(cross, n=n)[..., :length] if cross is not None else None
        return (grad_u.view(shape) if grad_u is not None else None), grad_k, None, None


def fft_causal_conv(u: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Causal convolution y[t] = sum_{s<=t} k[s] u[t-s] along the last axis via FFT.

    u: (..., H, L), k: (H, L) real.
    """
    n = fft_size(u.shape[-1])
    return FFTCausalConv.apply(u, k, torch.fft.rfft(k.detach(), n=n), n)
