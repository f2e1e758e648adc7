"""`mixers`: each mixer's fast path against the step-by-step recurrence of the same layer.

The baseline is the model itself with every mixer's parallel core (FFT convolution, chunked scan)
swapped for a loop over time steps that updates the state with the layer's own discretized
parameters: what one would write from the layer's equations without the convolution view. Both
sides compute the same function (tests/test_benchmarks.py checks it), so the ratio is the speed-up
that the parallel form buys. Only the state update is sequential; maps that need no state (S5's
B_bar u) are applied to all steps at once, which is the fastest honest form of the loop.

    S4    dense bilinear A_bar (N x N per channel), rotated to real coordinates
    DSS   diagonal exp(dt Lambda) with the exp-normalized readout
    S4D   diagonal ZOH (dA, dB, C) from `discrete_system`
    S5    MIMO diagonal ZOH (Lambda_bar, B_bar, C, D) from `discrete_system`
    Mamba `selective_scan_sequential` (the time loop differentiated by autograd)
    Mega  the damped EMA h_t = alpha beta x_t + (1 - alpha delta) h_{t-1}, both directions
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial
from types import MethodType
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks import Context, Row, Task, register_benchmark
from benchmarks.runner import Step, forward_backward_step
from model_zoo import build_model
from model_zoo.layers.dss import DSSMixer
from model_zoo.layers.mamba import MambaMixer, selective_scan_sequential
from model_zoo.layers.mega import DampedEMA, MegaMixer
from model_zoo.layers.s4 import S4Mixer
from model_zoo.layers.s4d import S4DMixer
from model_zoo.layers.s5 import S5Mixer

ARCHS = ("s4", "dss", "s4d", "s5", "mamba", "mega")
BASELINE_NAMES = {
    "s4": "sequential recurrence (dense bilinear A)",
    "dss": "sequential recurrence (diagonal)",
    "s4d": "sequential recurrence (diagonal ZOH)",
    "s5": "sequential recurrence (MIMO diagonal ZOH)",
    "mamba": "selective_scan_sequential",
    "mega": "sequential EMA recurrence",
}


# ---------------------------------------------------------------------------------------------
# The recurrences. Each takes the layer and its core's input x (B, L, H) and returns what the
# layer's `core` returns; they work in the input's dtype.


def s4_real_system(layer: S4Mixer, length: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(A_bar (H, N, N), B_bar (H, N), C (H, N)), real, of the layer's bilinear system in real coordinates.

    The layer stores N/2 modes; the full system has the modes and their conjugates, with
    A = Lambda - P P^* (dense: the low-rank term couples every mode), bilinear
    A_bar = (I - dt/2 A)^-1 (I + dt/2 A), B_bar = (I - dt/2 A)^-1 dt B, and C = C~ (I - A_bar^L)^-1
    (the layer learns C~). With the state x = [z, conj z], the unitary Q = [[I, I], [-iI, iI]]/sqrt 2
    maps it to sqrt 2 [Re z, Im z], in which every matrix is real: a real N x N step costs a
    quarter of the complex one. Computed in complex128 (A_bar^L of a non-normal A), differentiably.
    """
    system = layer.nplr_system()
    dt = system.pop("dt").to(torch.float64)[:, None, None]
    lam, p, b, c_tilde = (
        torch.cat([v, v.conj()], dim=-1).to(torch.complex128) for v in (system[k] for k in ("lam", "p", "b", "c_tilde"))
    )
    n = lam.shape[-1]
    eye = torch.eye(n, dtype=torch.complex128, device=lam.device)
    a = torch.diag_embed(lam) - p[..., :, None] * p.conj()[..., None, :]
    backward = torch.linalg.inv(eye - dt / 2 * a)
    a_bar = backward @ (eye + dt / 2 * a)
    b_bar = (backward @ b[..., None])[..., 0] * dt[..., 0]
    # C (I - A_bar^L) = C~  <=>  (I - A_bar^L)^T C^T = C~^T
    c = torch.linalg.solve((eye - torch.linalg.matrix_power(a_bar, length)).mT, c_tilde)
    half = torch.eye(n // 2, dtype=torch.complex128, device=lam.device)
    q = torch.cat([torch.cat([half, half], 1), torch.cat([-1j * half, 1j * half], 1)], 0) / math.sqrt(2)
    a_real = (q @ a_bar @ q.conj().T).real
    b_real = (b_bar @ q.T).real
    c_real = (c @ q.conj().T).real
    return a_real.to(dtype), b_real.to(dtype), c_real.to(dtype)


def s4_recurrence(layer: S4Mixer, x: torch.Tensor) -> torch.Tensor:
    """x_k = A_bar x_{k-1} + B_bar u_k, y_k = C x_k + D u_k, one step at a time (state (H, B, N))."""
    a, b, c = s4_real_system(layer, x.shape[1], x.dtype)
    state = x.new_zeros(x.shape[2], x.shape[0], a.shape[-1])  # (H, B, N)
    a_t = a.mT
    outputs = []
    for u in x.permute(2, 0, 1).unbind(-1):  # (H, B) per step
        state = torch.baddbmm(u[..., None] * b[:, None, :], state, a_t)
        outputs.append((state * c[:, None, :]).sum(-1))
    y = torch.stack(outputs, dim=-1).permute(1, 2, 0)  # (B, L, H)
    return y + layer.d * x


def dss_recurrence(layer: DSSMixer, x: torch.Tensor) -> torch.Tensor:
    """g_k = exp(x_n) g_{k-1} + exp(-s_n) u_k, y_k = Re sum_n c_n g_k,n + D u_k.

    x_n = dt Lambda_n and c_n = W_n / (Lambda_n S_n), S_n = sum_{r<L} exp(x_n r): the kernel's
    exp-normalization. A growing mode (Re x_n > 0) carries the shift s_n = x_n (L - 1) in its
    input, so the state never exceeds exp(0): without it the float32 state of such a mode overflows.
    """
    system = layer.diagonal_system()
    length = x.shape[1]
    rate = system["dt"][:, None] * system["lam"]  # (H, N/2)
    growing = rate.real > 0
    stable_rate = torch.where(growing, -rate, rate)
    inv_sum = torch.expm1(stable_rate) / torch.expm1(stable_rate * length)
    shift = torch.where(growing, rate * (length - 1), torch.zeros_like(rate))
    readout = system["w"] / system["lam"] * inv_sum
    decay, gain = torch.exp(rate), torch.exp(-shift)
    state = torch.zeros(x.shape[0], *rate.shape, dtype=decay.dtype, device=x.device)
    outputs = []
    for u in x.unbind(1):
        state = decay * state + gain * u[..., None]
        outputs.append((state * readout).sum(-1).real)
    return torch.stack(outputs, dim=1).to(x.dtype) + layer.d * x


def s4d_recurrence(layer: S4DMixer, x: torch.Tensor) -> torch.Tensor:
    """h_k = dA h_{k-1} + dB u_k, y_k = 2 Re sum_n C_n h_k,n + D u_k (conjugate modes implied)."""
    d_a, d_b, c = layer.discrete_system()
    state = torch.zeros(x.shape[0], *d_a.shape, dtype=d_a.dtype, device=x.device)
    outputs = []
    for u in x.unbind(1):
        state = d_a * state + d_b * u[..., None]
        outputs.append(2 * (state * c).sum(-1).real)
    return torch.stack(outputs, dim=1).to(x.dtype) + layer.d * x


def s5_recurrence(layer: S5Mixer, x: torch.Tensor) -> torch.Tensor:
    """h_k = Lambda_bar h_{k-1} + B_bar u_k, y_k = 2 Re(C h_k) + D u_k over all channels at once."""
    lam_bar, b_bar, c, d = layer.discrete_system()
    inputs = x.to(b_bar.dtype) @ b_bar.T  # (B, L, P/2): needs no state, so not in the loop
    state = inputs.new_zeros(inputs.shape[0], inputs.shape[2])
    states = []
    for term in inputs.unbind(1):
        state = lam_bar * state + term
        states.append(state)
    return (2 * (torch.stack(states, dim=1) @ c.T).real).to(x.dtype) + d * x


def mamba_recurrence(layer: MambaMixer, x: torch.Tensor) -> torch.Tensor:
    """The layer's own core with the selective scan run by `selective_scan_sequential`."""
    u, z = layer.in_proj(x).chunk(2, dim=-1)
    u = F.silu(layer.conv(u.transpose(1, 2))[..., : x.shape[1]].transpose(1, 2))
    dt, b, c = layer.selective_inputs(u)
    y = selective_scan_sequential(u, dt, -torch.exp(layer.a_log), b, c) + layer.d * u
    return y * F.silu(z)


def ema_recurrence(ema: DampedEMA, u: torch.Tensor) -> torch.Tensor:
    """What `DampedEMA.convolve` returns, for u (B, d_model, L), one step at a time.

    h_t = alpha beta x_t + (1 - alpha delta) h_{t-1}, y_t = sum_n eta_n h_t,n / sqrt(n_dim). The
    backward direction is the same recurrence on the reversed sequence (its channels come second
    in the parameters), so both directions run in one loop over stacked channels.
    """
    alpha = torch.sigmoid(ema.alpha_logit)
    decay = 1.0 - alpha * torch.sigmoid(ema.delta_logit)
    gain = alpha * ema.beta
    readout = ema.eta * ema.readout_scale
    inputs = torch.cat([u, u.flip(-1)], dim=1) if ema.bidirectional else u  # (B, channels, L)
    state = u.new_zeros(u.shape[0], *decay.shape)
    outputs = []
    for term in inputs.unbind(-1):
        state = decay * state + gain * term[..., None]
        outputs.append((state * readout).sum(-1))
    y = torch.stack(outputs, dim=-1)
    if not ema.bidirectional:
        return y
    forward, backward = y.split(ema.d_model, dim=1)
    return forward + backward.flip(-1)


_RECURRENCES = {S4Mixer: s4_recurrence, DSSMixer: dss_recurrence, S4DMixer: s4d_recurrence,
                S5Mixer: s5_recurrence, MambaMixer: mamba_recurrence}


def use_recurrences(model: nn.Module) -> nn.Module:
    """Swap, in place, every mixer's parallel core for its recurrence; returns the model.

    The parameters are untouched (the recurrences read them), so the model keeps training the
    same weights and a state dict moves freely between the two forms.
    """
    for module in model.modules():
        recurrence = _RECURRENCES.get(type(module))
        if recurrence is not None:
            module.core = MethodType(recurrence, module)
        elif isinstance(module, MegaMixer):
            module.ema.convolve = partial(ema_recurrence, module.ema)
    return model


# ---------------------------------------------------------------------------------------------
# The benchmark


@dataclass(frozen=True)
class MixerScale:
    dataset: str
    batch: int
    warmup: int
    repeats: int
    baseline_repeats: int
    overrides: dict[str, Any] = field(default_factory=dict)


SCALES = {
    "full": MixerScale("mnist", batch=64, warmup=1, repeats=3, baseline_repeats=1),
    "quick": MixerScale("mnist", batch=8, warmup=1, repeats=2, baseline_repeats=1),
    "tiny": MixerScale("digits", batch=2, warmup=0, repeats=1, baseline_repeats=1,
                       overrides={"n_layers": 1, "d_model": 16, "d_state": 8}),
}


def tiny_overrides(arch: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """Mega's own widths (value width, Q/K width) shrink with d_model in the tiny scale."""
    if arch == "mega" and overrides:
        return {**overrides, "mixer_options": {"hidden": 16, "z_dim": 16}}
    return overrides


def model_inputs(model: nn.Module, batch: int, seed: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images in [0, 1] and labels for `model`'s input shape, the same for every process."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, *model.config.input_shape, generator=generator)
    labels = torch.randint(model.config.classes, (batch,), generator=generator)
    return images.to(device), labels.to(device)


def setup_mixer_model(
    device: str, arch: str, dataset: str, batch: int, overrides: dict[str, Any], sequential: bool, seed: int = 0
) -> Step:
    """A forward+backward step of build_model(arch, dataset), fast or with its recurrences."""
    torch.manual_seed(seed)
    model = build_model(arch, dataset, **overrides).to(device)
    if sequential:
        use_recurrences(model)
    return forward_backward_step(model, *model_inputs(model, batch, seed, device))


@register_benchmark("mixers")
def mixers_benchmark(ctx: Context) -> list[Row]:
    """Each mixer's parallel path against the sequential recurrence of the same layer (fwd+bwd, MNIST preset)."""
    scale = SCALES[ctx.scale]
    rows = []
    for arch in ARCHS:
        params = {"arch": arch, "dataset": scale.dataset, "batch": scale.batch,
                  "overrides": tiny_overrides(arch, scale.overrides)}
        ours = Task(f"{arch} parallel", setup_mixer_model, {**params, "sequential": False}, scale.warmup, scale.repeats)
        baseline = Task(BASELINE_NAMES[arch], setup_mixer_model, {**params, "sequential": True}, 0, scale.baseline_repeats)
        mine, theirs = ctx.compare(arch, ours, baseline)
        rows.append(Row("mixers", f"{arch} {scale.dataset} batch {scale.batch}", mine, theirs))
    return rows
