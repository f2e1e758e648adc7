"""Mega: a multi-dimensional damped EMA followed by single-head gated softmax attention.

Ma et al. 2023, "Mega: Moving Average Equipped Gated Attention". The EMA gives every token a
smoothed, position-aware summary X' of its neighbourhood; gated attention then mixes tokens
globally with queries/keys derived from X' and values from the raw input X. The layer ends in its
own update gate, Y = phi * H + (1 - phi) * X, which plays the role of the residual connection,
so the classifier's Block only applies the post-norm (registered with residual=False).

Parameter names follow the paper (alpha, delta, beta, eta); the released code calls the paper's
alpha `delta` and the paper's delta `alpha`. Initializations follow the released code.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from model_zoo.errors import ZooError
from model_zoo.frozen import WeightCache
from model_zoo.layers.base import FFTCausalConv, fft_size, register_mixer


def _alternating_ones(n: int) -> torch.Tensor:
    """[1, -1, 1, -1, ...]: the released code's expansion init, more stable than all ones."""
    return torch.where(torch.arange(n) % 2 == 0, 1.0, -1.0)


def two_sided_spectrum(forward: torch.Tensor, backward: torch.Tensor, n: int) -> torch.Tensor:
    """rfft (size n) of the two-sided kernel: forward lags at 0.., backward lags mirrored (see below)."""
    return torch.fft.rfft(forward, n=n) + torch.fft.rfft(backward, n=n).conj()


def fft_two_sided_conv(u: torch.Tensor, spectrum: torch.Tensor) -> torch.Tensor:
    """y[t] = sum_{s<=t} forward[t-s] u[s] + sum_{s>=t} backward[s-t] u[s] along the last axis.

    The second sum is a causal convolution run on the reversed sequence, reversed back. For a real
    kernel, time reversal (mod n) is conjugation of its spectrum, so both directions share one
    transform of u: half the FFT work of convolving the reversed input separately. With n = 2L
    the reversed kernel's lag m > 0 sits at index n - m; a product that wraps past n lands at an
    output index >= L + 1, which is cut off, so the circular convolution is exact on t < L.
    u: (..., H, L); spectrum: `two_sided_spectrum(forward, backward, 2L)` of (H, L) kernels.
    """
    length = u.shape[-1]
    n = 2 * length
    return torch.fft.irfft(torch.fft.rfft(u, n=n) * spectrum, n=n)[..., :length]


class DampedEMA(nn.Module):
    """Multi-dimensional damped EMA per channel, applied as an FFT convolution.

    For each channel and each of the `d_state` expansion dimensions n:
        h_t[n] = alpha[n] * beta[n] * x_t + (1 - alpha[n] * delta[n]) * h_{t-1}[n]
        y_t    = sum_n eta[n] * h_t[n] / sqrt(d_state)
    which unrolls to a convolution with K[l] = sum_n eta[n] alpha[n] beta[n] (1 - alpha[n] delta[n])^l
    / sqrt(d_state), so no time loop is needed. Bidirectional: a second, independent EMA runs on the
    reversed sequence and its (re-reversed) output is added. The output is SiLU(y + omega * x).
    """

    def __init__(self, d_model: int, d_state: int = 16, bidirectional: bool = True) -> None:
        super().__init__()
        self.d_model = d_model
        self.d_state = d_state
        self.bidirectional = bidirectional
        channels = 2 * d_model if bidirectional else d_model
        # alpha, delta in (0, 1) via sigmoid of these logits.
        self.alpha_logit = nn.Parameter(torch.randn(channels, d_state) * 0.2)
        self.delta_logit = nn.Parameter(torch.randn(channels, d_state) * 0.2)
        self.beta = nn.Parameter(_alternating_ones(d_state) + torch.randn(channels, d_state) * 0.02)
        self.eta = nn.Parameter(torch.randn(channels, d_state))
        self.omega = nn.Parameter(torch.randn(d_model))
        # Keeps the kernel's scale independent of the expansion size, as in the released code.
        self.readout_scale = 1.0 / math.sqrt(d_state)
        self.weight_cache = WeightCache()

    def kernel(self, length: int) -> torch.Tensor:
        """EMA kernels (channels, length); rows d_model.. are the backward direction's."""
        alpha = torch.sigmoid(self.alpha_logit)
        decay = 1.0 - alpha * torch.sigmoid(self.delta_logit)
        steps = torch.arange(length, device=decay.device, dtype=decay.dtype)
        powers = torch.exp(torch.log(decay)[..., None] * steps)  # (channels, d_state, L)
        weights = self.eta * alpha * self.beta * self.readout_scale
        return torch.einsum("cn,cnl->cl", weights, powers)

    def convolve(self, u: torch.Tensor) -> torch.Tensor:
        """The EMA readout y for channels-first input u (B, d_model, L), before omega and SiLU.

        The kernel's spectrum is computed once while the weights are frozen (model_zoo/frozen.py).
        """
        length = u.shape[-1]
        n = fft_size(length)

        def operator() -> tuple[torch.Tensor, torch.Tensor]:
            k = self.kernel(length).to(u.dtype)
            if not self.bidirectional:
                return k, torch.fft.rfft(k.detach(), n=n)
            forward, backward = k.split(self.d_model, dim=0)
            return k, two_sided_spectrum(forward, backward, n)

        k, spectrum = self.weight_cache.get(self, ("ema", length, u.device, u.dtype), operator)
        if not self.bidirectional:
            return FFTCausalConv.apply(u, k, spectrum, n)
        return fft_two_sided_conv(u, spectrum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, d_model) -> X' (B, L, d_model)."""
        y = self.convolve(x.transpose(1, 2)).transpose(1, 2)
        return F.silu(y + self.omega * x)


class RelativePositionBias(nn.Module):
    """A learned scalar bias per offset j - i, shared by all query/key pairs at that offset."""

    def __init__(self, max_len: int) -> None:
        super().__init__()
        self.max_len = max_len
        self.weight = nn.Parameter(torch.randn(2 * max_len - 1) * 0.02)

    def forward(self, length: int) -> torch.Tensor:
        """bias[i, j] = weight[max_len - 1 + j - i], shape (length, length)."""
        if length > self.max_len:
            raise ZooError(f"sequence length {length} exceeds Mega's max_len {self.max_len}; build it with a larger max_len")
        positions = torch.arange(length, device=self.weight.device)
        return self.weight[positions[None, :] - positions[:, None] + self.max_len - 1]


@register_mixer("mega", causal=False, supports_ads=False, residual=False)
class MegaMixer(nn.Module):
    """Mega: damped EMA + single-head gated attention with relative position bias."""

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        hidden: int = 32,
        z_dim: int = 64,
        bidirectional: bool = True,
        max_len: int = 4096,
    ) -> None:
        """d_state: EMA expansion dimension; hidden: width of values V; z_dim: width of Q/K.

        max_len: longest sequence the relative position bias covers (4096 = Tiny-ImageNet 64x64).
        """
        super().__init__()
        self.d_model = d_model
        self.hidden = hidden
        self.z_dim = z_dim
        self.ema = DampedEMA(d_model, d_state, bidirectional)
        self.v_proj = nn.Linear(d_model, hidden)
        # One projection of X' yields the update gate, the shared Q/K base Z, the reset gate and
        # the candidate's input term, in that order.
        self.mx_proj = nn.Linear(d_model, d_model + z_dim + hidden + d_model)
        self.h_proj = nn.Linear(hidden, d_model, bias=False)
        # Row 0 turns Z into Q, row 1 into K (per-dimension scale and offset).
        self.qk_scale = nn.Parameter(torch.randn(2, z_dim) * 0.02)
        self.qk_offset = nn.Parameter(torch.zeros(2, z_dim))
        self.position_bias = RelativePositionBias(max_len)
        for linear in (self.v_proj, self.mx_proj, self.h_proj):
            nn.init.normal_(linear.weight, std=0.02)
            if linear.bias is not None:
                nn.init.zeros_(linear.bias)

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """O = softmax(Q K^T / sqrt(z_dim) + bias) V over the whole (non-causal) sequence."""
        batch, length, _ = q.shape
        # Scaling q (L x z_dim) rather than the scores (L x L) and fusing the bias add into the
        # matmul saves two passes over the largest tensor in the model.
        bias = self.position_bias(length).expand(batch, length, length)
        scores = torch.baddbmm(bias, q / math.sqrt(self.z_dim), k.transpose(1, 2))
        return torch.softmax(scores, dim=-1) @ v

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, d_model) -> Y = phi * H + (1 - phi) * X, (B, L, d_model)."""
        x_ema = self.ema(x)
        v = F.silu(self.v_proj(x))
        phi_logit, z, r, h_in = self.mx_proj(x_ema).split([self.d_model, self.z_dim, self.hidden, self.d_model], dim=-1)
        z = F.silu(z)
        q = z * self.qk_scale[0] + self.qk_offset[0]
        k = z * self.qk_scale[1] + self.qk_offset[1]
        o = self.attention(q, k, v)
        h = F.silu(h_in + self.h_proj(F.silu(r) * o))
        return torch.lerp(x, h, torch.sigmoid(phi_logit))
