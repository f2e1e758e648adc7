"""Certified bounds for SSM classifiers: parameter-only gains and interval bound propagation (IBP).

Two kinds of bound, for an input perturbation of Linf radius eps:

* Parameter-only (global). An LTI mixer (S4, DSS, S4D, S5, Mega's EMA) is a linear convolution
  y_t = sum_{l >= 0} K_eff[l] u_{t-l}, its D skip folded into lag 0 (K_eff[0] = K[0] + D). Its
  Linf -> Linf gain is exactly max_h sum_l sum_k |K_eff[l, h, k]| (per output channel, the l1
  norm of its row of the impulse response; SISO mixers have k = h only). That is <= ||K||_1 + |D|
  per channel, with equality when K[0] and D have the same sign. The input that attains it at the
  last step is the sign pattern of the kernel, reversed in time. A Linear map's Linf gain is its
  operator norm, the largest absolute row sum of W.
* Input-dependent (local), by IBP: the eps-box around each test image (clipped to [0, 1]) is
  pushed through every module with the enclosures of `ssmbench.intervals`, in float64. LayerNorm,
  AdS, attention, Mega's gates and all of Mamba (its dt, B and C depend on the input) have no
  useful global bound and get only this one. Mamba's bound is local: it holds for the box around
  that one input and says nothing about another input.

An example is certified at eps when it is classified correctly and the lower bound of every
margin logit_y - logit_j (computed from the pooled box through the head's row differences, which
is exact for that last linear map) is positive: no perturbation in the box can change the label.

Why not auto_LiRPA: its only release (0.3, 2022) requires torch < 1.13 and does not import on
torch 2.13 (numpy 2 removed `numpy.lib.arraysetops`; its graph parser imports
`torch.onnx.symbolic_helper._set_opset_version`, which torch 2 no longer has), and it has no bound
operator for the FFTs (`rfft`/`irfft`) that every LTI mixer here convolves with, nor for complex
tensors, from which S4, DSS and S5 build their kernels.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from model_zoo.ads import AdaptiveScaling
from model_zoo.errors import UsageError
from ssmbench import intervals
from ssmbench.intervals import Box

# A rule turns an input box into an output box, recording boxes at module boundaries on the way.
Records = dict[tuple[int, str], Box]


class IntervalPass:
    """One IBP pass: the boxes at each module's input and output, keyed like analysis' recorder."""

    def __init__(self) -> None:
        self.records: Records = {}

    def record(self, module: nn.Module, where: str, box: Box) -> Box:
        self.records[(id(module), where)] = box
        return box


# --- LTI impulse responses and their gains -------------------------------------------------------

def siso_response(mixer: Any, length: int) -> torch.Tensor:
    """(H, L): K_eff[h, l] of y_h = K_h * u_h + D_h u_h (S4, DSS, S4D)."""
    kernel = mixer.kernel(length).detach().clone()
    kernel[:, 0] += mixer.d.detach()
    return kernel


def s5_response(mixer: Any, length: int) -> torch.Tensor:
    """(L, H, H): K_eff[l] = 2 Re(C diag(Lambda_bar^l) B_bar), plus diag(D) at lag 0 (MIMO)."""
    lam_bar, b_bar, c, d = (t.detach() for t in mixer.discrete_system())
    steps = torch.arange(length, device=lam_bar.device, dtype=lam_bar.real.dtype)
    powers = torch.exp(steps[:, None] * torch.log(lam_bar)[None, :])  # (L, P/2)
    response = 2 * torch.einsum("hp,lp,pk->lhk", c, powers, b_bar).real
    response[0] += torch.diag(d)
    return response


def ema_response(mixer: Any, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mega's EMA before its SiLU, y + omega x, as (causal (H, L) with lags >= 0, anticausal (H, L)
    with lag 0 zeroed): both directions' lag 0 and omega are folded into the causal part."""
    ema = mixer.ema
    kernel = ema.kernel(length).detach()
    if not ema.bidirectional:
        forward, backward = kernel.clone(), torch.zeros_like(kernel)
    else:
        forward, backward = (part.clone() for part in kernel.split(ema.d_model, dim=0))
    forward[:, 0] += backward[:, 0] + ema.omega.detach()
    backward[:, 0] = 0
    return forward, backward


def siso_gain(response: torch.Tensor) -> torch.Tensor:
    return response.abs().sum(dim=-1)


def two_sided_reach(forward: torch.Tensor, backward: torch.Tensor) -> torch.Tensor:
    """(H, L): the l1 weight that output step t sees, sum_{l <= t} |f_l| + sum_{1 <= l <= L-1-t} |b_l|.

    On a finite sequence no step sees every lag in both directions, so the exact gain of the
    two-sided EMA is the maximum over t, not ||f||_1 + ||b||_1.
    """
    past = forward.abs().cumsum(dim=-1)
    future = backward.abs().cumsum(dim=-1).flip(-1)  # at t: sum of |b_l| for l <= L - 1 - t (b_0 = 0)
    return past + future


def lti_gain(arch: str, mixer: Any, length: int) -> torch.Tensor | None:
    """Per output channel, the exact Linf -> Linf gain of the mixer's LTI part; None if it has none."""
    if arch in SISO_ARCHS:
        return siso_gain(siso_response(mixer, length))
    if arch == "s5":
        return s5_response(mixer, length).abs().sum(dim=(0, 2))
    if arch == "mega":
        return two_sided_reach(*ema_response(mixer, length)).amax(dim=-1)
    return None


def linear_gain(weight: torch.Tensor) -> float:
    """||W||_{inf -> inf}: the largest absolute row sum."""
    return weight.detach().abs().sum(dim=1).max().item()


def causal_abs_conv(rad: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """out[b, t, h] = sum_{l <= t} |kernel[h, l]| rad[b, t - l, h], directly (no FFT rounding)."""
    length = rad.shape[1]
    weight = kernel.abs().flip(-1)[:, None, :]  # (H, 1, L)
    return F.conv1d(F.pad(rad.transpose(1, 2), (length - 1, 0)), weight, groups=kernel.shape[0]).transpose(1, 2)


def anticausal_abs_conv(rad: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """out[b, t, h] = sum_{l >= 0} |kernel[h, l]| rad[b, t + l, h]: the causal one in reversed time."""
    return causal_abs_conv(rad.flip(1), kernel).flip(1)


# --- rules per component ----------------------------------------------------------------------

def linear_box(module: nn.Linear, box: Box) -> Box:
    return intervals.linear(box, module.weight, module.bias)


def layer_norm_box(module: nn.LayerNorm, box: Box) -> Box:
    return intervals.layer_norm(box, module.weight, module.bias, module.eps)


ACTIVATION_BOXES: dict[str, Callable[[Box], Box]] = {
    "relu": lambda b: intervals.increasing(b, torch.relu),
    "sigmoid": lambda b: intervals.increasing(b, torch.sigmoid),
    "tanh": lambda b: intervals.increasing(b, torch.tanh),
}


def ads_box(module: Any, box: Box) -> Box:
    """act(W_s y + b_s) * y + act(W_b y + b_b); the identity when AdS is off."""
    if not isinstance(module, AdaptiveScaling):
        return box
    act = ACTIVATION_BOXES[module.act_name]
    return intervals.mul(act(linear_box(module.scale, box)), box) + act(linear_box(module.shift, box))


def attention_box(module: Any, box: Box) -> Box:
    """Single-head softmax self-attention (model_zoo.layers.attention.SelfAttention)."""
    q, k, v = linear_box(module.qkv, box).split([module.out_proj.in_features] * 3)
    scores = intervals.matmul(q, k.map(lambda t: t.transpose(1, 2)))
    weights = intervals.softmax(intervals.scale(scores, torch.tensor(module.scale, dtype=box.lower.dtype)))
    return linear_box(module.out_proj, intervals.matmul(weights, v))


def siso_core_box(mixer: Any, box: Box) -> Box:
    """Linear: the midpoint goes through the mixer itself, the radius through |K_eff| directly."""
    response = siso_response(mixer, box.lower.shape[1])
    return intervals.from_mid_rad(mixer.core(box.mid), causal_abs_conv(box.rad, response))


def s5_core_box(mixer: Any, box: Box) -> Box:
    response = s5_response(mixer, box.lower.shape[1]).abs()  # (L, H, H)
    rad = box.rad
    out = torch.zeros_like(rad)
    for lag in range(rad.shape[1]):
        out[:, lag:] += rad[:, : rad.shape[1] - lag] @ response[lag].T
    return intervals.from_mid_rad(mixer.core(box.mid), out)


def mamba_core_box(mixer: Any, box: Box) -> Box:
    """Mamba's core step by step in interval arithmetic (in_proj, causal depthwise conv, SiLU,
    selective dt/B/C, the recurrence h_t = exp(dt_t A) h_{t-1} + dt_t u_t B_t, y_t = C_t h_t + D u_t,
    gate SiLU(z)). Every enclosure depends on this input's box: the bound is local."""
    length = box.lower.shape[1]
    u, z = linear_box(mixer.in_proj, box).split([mixer.d_inner, mixer.d_inner])
    conv = mixer.conv
    u_mid = conv(u.mid.transpose(1, 2))[..., :length].transpose(1, 2)
    u_rad = F.conv1d(u.rad.transpose(1, 2), conv.weight.abs(), None, conv.stride, conv.padding, conv.dilation, conv.groups)
    u = intervals.silu(intervals.from_mid_rad(u_mid, u_rad[..., :length].transpose(1, 2)))
    dt_low, b, c = intervals.linear(u, mixer.x_proj.weight).split([mixer.dt_rank, mixer.d_state, mixer.d_state])
    dt = intervals.increasing(linear_box(mixer.dt_proj, dt_low), F.softplus)
    a = -torch.exp(mixer.a_log)  # (D, N) < 0
    state = Box.point(torch.zeros(*box.lower.shape[:1], mixer.d_inner, mixer.d_state, dtype=box.lower.dtype, device=box.lower.device))
    outputs: list[Box] = []
    for t in range(length):
        dt_t, u_t, b_t, c_t = _step(dt, t, channel=True), _step(u, t, channel=True), _step(b, t), _step(c, t)
        decay = intervals.increasing(intervals.scale(dt_t, a), torch.exp)
        state = intervals.mul(decay, state) + intervals.mul(intervals.mul(dt_t, u_t), b_t)
        read = intervals.mul(state, c_t)
        outputs.append(Box(read.lower.sum(-1), read.upper.sum(-1)))
    y = Box(torch.stack([o.lower for o in outputs], 1), torch.stack([o.upper for o in outputs], 1))
    y = y + intervals.scale(u, mixer.d)
    return intervals.mul(y, intervals.silu(z))


def _step(box: Box, t: int, channel: bool = False) -> Box:
    """Time step t of a (B, L, X) box, shaped (B, X, 1) for channels or (B, 1, X) for states."""
    return Box(*(x[:, t, :, None] if channel else x[:, t, None, :] for x in (box.lower, box.upper)))


SISO_ARCHS = ("s4", "dss", "s4d")
CORE_BOXES: dict[str, Callable[[nn.Module, Box], Box]] = {
    **dict.fromkeys(SISO_ARCHS, siso_core_box),
    "s5": s5_core_box,
    "mamba": mamba_core_box,
}


def ssm_mixer_box(arch: str, mixer: Any, box: Box, ibp: IntervalPass) -> Box:
    """out_proj(ads(core(x))), recording what analysis hooks: mixer input, AdS in/out, out_proj in/out."""
    ibp.record(mixer, "input", box)
    core = ibp.record(mixer.ads, "input", CORE_BOXES[arch](mixer, box))
    gated = ibp.record(mixer.ads, "output", ads_box(mixer.ads, core))
    ibp.record(mixer.out_proj, "input", gated)
    out = ibp.record(mixer.out_proj, "output", linear_box(mixer.out_proj, gated))
    return ibp.record(mixer, "output", out)


def mega_mixer_box(arch: str, mixer: Any, box: Box, ibp: IntervalPass) -> Box:
    """Mega: EMA (linear, then SiLU), gated attention with relative position bias, update gate."""
    ibp.record(mixer, "input", box)
    length = box.lower.shape[1]
    forward, backward = ema_response(mixer, length)
    ema = mixer.ema
    pre_mid = ema.convolve(box.mid.transpose(1, 2)).transpose(1, 2) + ema.omega * box.mid
    pre_rad = causal_abs_conv(box.rad, forward) + anticausal_abs_conv(box.rad, backward)
    x_ema = ibp.record(ema, "output", intervals.silu(intervals.from_mid_rad(pre_mid, pre_rad)))
    v = intervals.silu(linear_box(mixer.v_proj, box))
    phi_logit, z, r, h_in = linear_box(mixer.mx_proj, x_ema).split([mixer.d_model, mixer.z_dim, mixer.hidden, mixer.d_model])
    z = intervals.silu(z)
    q = intervals.scale(z, mixer.qk_scale[0] / mixer.z_dim**0.5, mixer.qk_offset[0] / mixer.z_dim**0.5)
    k = intervals.scale(z, mixer.qk_scale[1], mixer.qk_offset[1])
    bias = mixer.position_bias(length)
    scores = intervals.matmul(q, k.map(lambda t: t.transpose(1, 2)))
    o = intervals.matmul(intervals.softmax(Box(scores.lower + bias, scores.upper + bias)), v)
    gated = intervals.mul(intervals.silu(r), o)
    h = intervals.silu(h_in + intervals.linear(gated, mixer.h_proj.weight))
    phi = intervals.increasing(phi_logit, torch.sigmoid)
    out = box + intervals.mul(phi, h - box)  # lerp(x, h, phi) = x + phi (h - x)
    return ibp.record(mixer, "output", out)


MIXER_BOXES: dict[str, Callable[[str, nn.Module, Box, IntervalPass], Box]] = {
    **dict.fromkeys(CORE_BOXES, ssm_mixer_box),
    "mega": mega_mixer_box,
}


def block_box(arch: str, block: Any, box: Box, ibp: IntervalPass) -> Box:
    """x = LN(x + mixer(x)) (or LN(mixer(x)) for Mega), then x = LN(x + attention(x))."""
    mixed = MIXER_BOXES[arch](arch, block.mixer, box, ibp)
    summed = ibp.record(block.norm, "input", mixed + box if block.residual else mixed)
    box = ibp.record(block.norm, "output", layer_norm_box(block.norm, summed))
    if block.attention is not None:
        ibp.record(block.attention, "input", box)
        attended = ibp.record(block.attention, "output", attention_box(block.attention, box))
        summed = ibp.record(block.attention_norm, "input", box + attended)
        box = ibp.record(block.attention_norm, "output", layer_norm_box(block.attention_norm, summed))
    return box


def check_supported(model: nn.Module) -> str:
    arch = getattr(getattr(model, "config", None), "arch", None)
    if arch not in MIXER_BOXES:
        raise UsageError(f"no interval bounds for architecture {arch!r}; bounds cover {', '.join(sorted(MIXER_BOXES))}")
    return arch


def as_float64(model: nn.Module) -> nn.Module:
    """A float64 copy in eval mode: IBP's rounding then stays ~1e-12, far below any width."""
    return copy.deepcopy(model).double().eval()


@dataclass(frozen=True)
class Propagation:
    records: Records
    pooled: Box  # (N, d_model) after the mean pool
    margins: torch.Tensor  # (N, K) lower bounds of logit_y - logit_j (+inf at j = y)


def propagate(model64: Any, images: torch.Tensor, labels: torch.Tensor, eps: float) -> Propagation:
    """IBP of the eps-box around each image (clipped to [0, 1]) through a float64 classifier."""
    arch = check_supported(model64)
    ibp = IntervalPass()
    with torch.no_grad():
        x = images.to(torch.float64)
        box = Box.around(x, eps, 0.0, 1.0).map(model64.to_sequence)
        box = layer_norm_box(model64.encoder_norm, linear_box(model64.encoder, box))
        for block in model64.blocks:
            box = block_box(arch, block, box, ibp)
        pooled = Box(box.lower.mean(dim=1), box.upper.mean(dim=1))
        head = model64.head
        # margin_j = (w_y - w_j) . p + (b_y - b_j): exact over the pooled box for this last linear map.
        w_diff = head.weight[labels][:, None, :] - head.weight[None, :, :]  # (N, K, d)
        b_diff = head.bias[labels][:, None] - head.bias[None, :]
        margins = (w_diff @ pooled.mid[:, :, None]).squeeze(-1) - (w_diff.abs() @ pooled.rad[:, :, None]).squeeze(-1) + b_diff
        margins[torch.arange(len(labels)), labels] = torch.inf
    return Propagation(ibp.records, pooled, margins)


def certified(model64: Any, images: torch.Tensor, labels: torch.Tensor, eps: float, batch_size: int = 128) -> torch.Tensor:
    """bool (N,): IBP proves every image in the eps-box is classified as its label."""
    flags = []
    for start in range(0, len(images), batch_size):
        x, y = images[start:start + batch_size], labels[start:start + batch_size]
        flags.append((propagate(model64, x, y, eps).margins.min(dim=1).values > 0).cpu())
    return torch.cat(flags)
