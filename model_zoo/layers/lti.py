"""The LTI convolution mixers' shared core, y = K * u + D u, and the choice of convolution algorithm.

S4, DSS and S4D differ only in how they compute the kernel K (H, L) from their weights; applying it
is the same causal convolution per channel, implemented once here. Two exact algorithms compute it:

- `fft`: real FFTs of size 2L (`FFTCausalConv`), O(L log L) per channel;
- `direct`: one batched matmul with the (H, L, L) Toeplitz matrix of K (`ToeplitzCausalConv`),
  O(L^2) per channel, but one dense GEMM instead of two FFTs, a complex product and their copies.

`conv_algorithm(L)` picks `direct` for L <= DIRECT_MAX_LENGTH. The rule rests on this measurement
(2-core AMD EPYC, torch 2.13 CPU, one thread, batch 64, H = 128, float32, u in the (B, H, L) view
that `core` passes, forward + backward of the convolution alone, best of 7; fft time / direct time;
taken side by side in one process on a shared machine at load average ~15, so ratios for guidance,
not published figures):

    L                                16     32     64    100    128    196    256    784
    input gradient only (attacks)  2.02x  3.94x  1.61x  1.65x  0.70x  2.14x  0.47x  0.64x
    input + kernel gradient        2.44x  5.02x  1.10x  0.82x  0.76x  0.34x  0.32x  0.19x

Direct wins up to L = 64 (digits, 8x8) in both the attack passes, which dominate adversarial
training, and the training pass; past 64 the training pass turns against it and by 256 the attack
passes do too (its L^2 work against the FFT's L log L). Hence the threshold 64.

Rechecked after the FFT convolution began to work in cache-sized blocks (model_zoo/layers/base.py,
about 2x faster at L = 784), same method, on this project's later machine (2-core Intel Xeon), the
study runners paused:

    L                                16     32     64    100    128    196    256
    input gradient only (attacks)  3.58x  2.45x  1.45x  1.38x  0.71x  0.82x  0.59x
    input + kernel gradient        3.68x  3.45x  1.76x  1.13x  0.72x  0.58x  0.39x

Direct still wins at 64 and now at 100 as well; the threshold stays 64 so that the committed
BasicMotions study (L = 100) reruns on the algorithm its rows were computed with.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from model_zoo.layers.base import FFTCausalConv, SSMMixer, fft_size

DIRECT_MAX_LENGTH = 64


def toeplitz_operator(k: torch.Tensor) -> torch.Tensor:
    """(H, L, L) with op[h, s, t] = k[h, t - s] for t >= s, else 0, so that y_h = u_h @ op_h."""
    channels, length = k.shape
    steps = torch.arange(length, device=k.device)
    lag = steps[None, :] - steps[:, None]
    padded = torch.cat([k, k.new_zeros(channels, 1)], dim=1)  # index `length` reads a zero
    return padded[:, torch.where(lag >= 0, lag, length)]


def diagonal_sums(m: torch.Tensor) -> torch.Tensor:
    """out[h, j] = sum_s m[h, s, s + j] for j < L: the adjoint of `toeplitz_operator`.

    Padding each row with L zeros and reading it with row stride 2L + 1 puts diagonal j in column j.
    """
    channels, length, _ = m.shape
    padded = F.pad(m, (0, length))  # (H, L, 2L), contiguous
    return padded.as_strided((channels, length, length), (2 * length * length, 2 * length + 1, 1)).sum(1)


class ToeplitzCausalConv(torch.autograd.Function):
    """y = u causally convolved with k along the last axis as a batched matmul with k's Toeplitz
    matrix `op` (passed in so that a frozen model builds it once); its gradient goes to k.

    u: (..., H, L); k: (H, L); op: toeplitz_operator(k) (H, L, L).
    """

    @staticmethod
    def forward(ctx: Any, u: torch.Tensor, k: torch.Tensor, op: torch.Tensor) -> torch.Tensor:
        shape = u.shape
        # Channel-major and contiguous: bmm on a strided batch falls back to one GEMM per channel
        # through select + copy (7x slower forward + backward at batch 4, torch profiler).
        u_h = u.reshape(-1, *shape[-2:]).transpose(0, 1).contiguous()  # (H, B, L)
        ctx.shape = shape
        ctx.save_for_backward(op, u_h if ctx.needs_input_grad[1] else None)
        return torch.bmm(u_h, op).transpose(0, 1).reshape(shape)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_y: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:
        op, u_h = ctx.saved_tensors
        g_h = grad_y.reshape(-1, *ctx.shape[-2:]).transpose(0, 1).contiguous()
        grad_u = grad_k = None
        if ctx.needs_input_grad[0]:  # dL/du[s] = sum_t op[s, t] g[t]
            grad_u = torch.bmm(g_h, op.transpose(1, 2)).transpose(0, 1).reshape(ctx.shape)
        if ctx.needs_input_grad[1]:  # dL/dk[j] = sum_{b, s} u[b, s] g[b, s + j]
            grad_k = diagonal_sums(torch.bmm(u_h.transpose(1, 2), g_h))
        return grad_u, grad_k, None


@dataclass(frozen=True)
class ConvAlgorithm:
    """An exact causal convolution: `prepare(k)` builds the weight-only operator (cached while the
    weights are frozen), `apply(u, k, operator)` convolves with gradients to u and k."""

    name: str
    prepare: Callable[[torch.Tensor], torch.Tensor]
    apply: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _fft_apply(u: torch.Tensor, k: torch.Tensor, spectrum: torch.Tensor) -> torch.Tensor:
    return FFTCausalConv.apply(u, k, spectrum, fft_size(u.shape[-1]))


CONV_ALGORITHMS = {
    "fft": ConvAlgorithm("fft", lambda k: torch.fft.rfft(k, n=fft_size(k.shape[-1])), _fft_apply),
    "direct": ConvAlgorithm("direct", toeplitz_operator, ToeplitzCausalConv.apply),
}


def conv_algorithm(length: int) -> ConvAlgorithm:
    """The faster exact algorithm at this sequence length (see the measurement above)."""
    return CONV_ALGORITHMS["direct" if length <= DIRECT_MAX_LENGTH else "fft"]


def causal_conv(u: torch.Tensor, k: torch.Tensor, algorithm: str | None = None) -> torch.Tensor:
    """y[t] = sum_{s<=t} k[s] u[t-s] along the last axis; u (..., H, L), k (H, L) real."""
    conv = conv_algorithm(u.shape[-1]) if algorithm is None else CONV_ALGORITHMS[algorithm]
    return conv.apply(u, k, conv.prepare(k.detach()))


class LTIConvMixer(SSMMixer):
    """Base of S4, DSS and S4D: core(x) = K * x + D x per channel, with K = kernel(L) (H, L).

    Subclasses define `kernel(length)` and a parameter `d` (H,). The skip term D x is the lag-0 tap
    of the same convolution: one convolution with K' = K + D e_0 (K'[:, 0] = K[:, 0] + D) computes
    K * x + D x, exactly in real arithmetic. Adding D x separately cost a multiply and an add over
    the whole (B, H, L) activation, each reading the convolution's channel-major output against
    the token-major input, forward and backward: removing them made a PGD-10 attack pass of S4 on
    digits 0.69x as long (34.5 -> 23.7 ms, batch 64, one thread, medians of 8 interleaved rounds,
    2-core CPU with a study on both cores, so a ratio for guidance) and DSS fwd+bwd at L = 784
    0.88x (0.462 -> 0.405 s, 2 threads, study runners paused). Outputs move by float rounding
    (input gradients 2e-10 away, of 4e-4). K' and its operator (spectrum or Toeplitz matrix) are
    computed once while the weights are frozen (eval mode or `frozen_weights`, model_zoo/frozen.py)
    and on every pass otherwise; `kernel(L)` itself stays K, which the analyses read.
    """

    d: torch.nn.Parameter

    def kernel(self, length: int) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def causal_conv(self, u: torch.Tensor) -> torch.Tensor:
        """u (B, H, L) convolved causally with K' = `kernel(L)` + D at lag 0: K * u + D u."""
        length = u.shape[-1]
        conv = conv_algorithm(length)

        def kernel_and_operator() -> tuple[torch.Tensor, torch.Tensor]:
            kernel = self.kernel(length).to(u.dtype)
            kernel = torch.cat([kernel[:, :1] + self.d[:, None].to(u.dtype), kernel[:, 1:]], dim=1)
            return kernel, conv.prepare(kernel.detach())

        key = ("conv", conv.name, length, u.device, u.dtype)
        kernel, operator = self.weight_cache.get(self, key, kernel_and_operator)
        return conv.apply(u, kernel, operator)

    def core(self, x: torch.Tensor) -> torch.Tensor:
        return self.causal_conv(x.transpose(1, 2)).transpose(1, 2)
