"""S5 and Mamba against step-by-step recurrences written here, HiPPO-N against its definition,
the chunked selective scan against the sequential one (values and gradients), AdS and causality."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

import model_zoo.layers.mamba as mamba_module
from model_zoo import build_model
from model_zoo.ads import AdaptiveScaling
from model_zoo.errors import ZooError
from model_zoo.layers.mamba import MambaMixer, selective_scan, selective_scan_sequential
from model_zoo.layers.s5 import S5Mixer, hippo_n_eigenbasis
from model_zoo.layers.scan import linear_scan_

# ---------------------------------------------------------------- S5


def legs_normal_part(n: int) -> torch.Tensor:
    """HiPPO-LegS entry by entry, plus the rank-1 term p p^T (p_i = sqrt(i + 1/2)) that makes it normal."""
    a = torch.zeros(n, n, dtype=torch.float64)
    for i in range(n):
        for j in range(n):
            if i > j:
                a[i, j] = -math.sqrt((2 * i + 1) * (2 * j + 1))
            elif i == j:
                a[i, j] = -(i + 1)
            a[i, j] += math.sqrt((i + 0.5) * (j + 0.5))
    return a


def sorted_spectrum(values: torch.Tensor) -> torch.Tensor:
    return values[torch.argsort(values.imag)]


@pytest.mark.parametrize("d_state", [8, 128])
def test_s5_lambda_starts_at_the_hippo_n_eigenvalues(d_state: int) -> None:
    expected = torch.linalg.eigvals(legs_normal_part(d_state))
    mixer = S5Mixer(4, d_state)
    lam = mixer.eigenvalues().detach().to(torch.complex128)
    assert lam.shape == (d_state // 2,)
    both_halves = torch.cat([lam, lam.conj()])
    torch.testing.assert_close(sorted_spectrum(both_halves), sorted_spectrum(expected), rtol=1e-5, atol=1e-5)


def test_s5_b_and_c_are_real_matrices_written_in_the_eigenbasis() -> None:
    """V diagonalizes HiPPO-N, and B = V^H B_real is the projection of a real matrix: V B + conj(V B) is real
    and V^H (V B + conj(V B)) = B again (the conjugate half is orthogonal to V)."""
    torch.manual_seed(0)
    normal = legs_normal_part(8).to(torch.complex128)
    lam, v = hippo_n_eigenbasis(8)
    torch.testing.assert_close(normal @ v, v * lam, rtol=1e-10, atol=1e-10)
    b = torch.view_as_complex(S5Mixer(4, 8).b.detach().double())
    b_real = v @ b + (v @ b).conj()
    torch.testing.assert_close(b_real.imag, torch.zeros_like(b_real.imag), rtol=0, atol=1e-6)
    torch.testing.assert_close(v.conj().T @ b_real, b, rtol=1e-6, atol=1e-6)


def test_s5_equals_its_recurrence() -> None:
    """x_k = Abar x_{k-1} + Bbar u_k, y_k = 2 Re(C x_k) + D u_k with ZOH matrices computed here."""
    torch.manual_seed(0)
    mixer = S5Mixer(6, 16)
    with torch.no_grad():  # larger steps, so that the kernel decays visibly over the sequence
        mixer.log_dt.uniform_(math.log(0.05), math.log(1.0))
    lam = mixer.eigenvalues().detach().to(torch.complex128)
    lam_bar = torch.exp(torch.exp(mixer.log_dt.detach().double()) * lam)
    b_bar = ((lam_bar - 1) / lam)[:, None] * torch.view_as_complex(mixer.b.detach().double())
    c = torch.view_as_complex(mixer.c.detach().double())
    d = mixer.d.detach().double()
    u = torch.randn(3, 37, 6)
    state = torch.zeros(3, 8, dtype=torch.complex128)
    expected = []
    for k in range(u.shape[1]):
        state = lam_bar * state + u[:, k].double().to(torch.complex128) @ b_bar.T
        expected.append(2 * (state @ c.T).real + d * u[:, k].double())
    torch.testing.assert_close(mixer.core(u).double(), torch.stack(expected, dim=1), rtol=1e-4, atol=1e-5)


def test_s5_discrete_system_is_zoh() -> None:
    mixer = S5Mixer(4, 8)
    lam_bar, b_bar, _, _ = mixer.discrete_system()
    lam = mixer.eigenvalues()
    dt = torch.exp(mixer.log_dt)
    torch.testing.assert_close(lam_bar, torch.exp(dt * lam))
    torch.testing.assert_close(b_bar, ((torch.exp(dt * lam) - 1) / lam)[:, None] * torch.view_as_complex(mixer.b))
    assert (lam.real < 0).all() and (dt >= 1e-3 - 1e-9).all() and (dt <= 1e-1 + 1e-9).all()


def test_s5_needs_an_even_state_size() -> None:
    with pytest.raises(ZooError, match="even d_state"):
        S5Mixer(4, 7)


# ---------------------------------------------------------------- the chunked selective scan


def scan_inputs(batch: int, length: int, d: int, n: int, dtype: torch.dtype, seed: int = 0) -> list[torch.Tensor]:
    """u, dt, A, B, C with dt spread over [1e-3, 1] and A over [-n, -0.1]: decays from ~1 to ~e^-n."""
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(batch, length, d, generator=gen, dtype=dtype)
    dt = torch.exp(torch.empty(batch, length, d, dtype=dtype).uniform_(math.log(1e-3), 0.0, generator=gen))
    a = -torch.empty(d, n, dtype=dtype).uniform_(0.1, n, generator=gen)
    b = torch.randn(batch, length, n, generator=gen, dtype=dtype)
    c = torch.randn(batch, length, n, generator=gen, dtype=dtype)
    return [t.requires_grad_() for t in (u, dt, a, b, c)]


def value_and_grads(fn, inputs: list[torch.Tensor], grad_out: torch.Tensor) -> list[torch.Tensor]:
    y = fn(*inputs)
    return [y, *torch.autograd.grad(y, inputs, grad_out)]


@pytest.mark.parametrize(("length", "chunk"), [(37, 8), (37, 16), (37, 64), (32, 8), (32, 32), (5, 1)])
def test_chunked_scan_equals_sequential_in_values_and_gradients(length: int, chunk: int) -> None:
    inputs = scan_inputs(3, length, 5, 4, torch.float64)
    grad_out = torch.randn(3, length, 5, dtype=torch.float64)
    names = ["y", "du", "ddt", "dA", "dB", "dC"]
    expected = value_and_grads(selective_scan_sequential, inputs, grad_out)
    got = value_and_grads(lambda *t: selective_scan(*t, chunk_size=chunk), inputs, grad_out)
    for name, g, e in zip(names, got, expected):
        torch.testing.assert_close(g, e, rtol=1e-9, atol=1e-10, msg=lambda m, name=name: f"{name}: {m}")


def test_chunked_scan_in_float32_matches_float64_reference() -> None:
    inputs = scan_inputs(4, 37, 6, 8, torch.float32, seed=1)
    grad_out = torch.randn(4, 37, 6)
    inputs64 = [t.detach().double().requires_grad_() for t in inputs]
    expected = value_and_grads(selective_scan_sequential, inputs64, grad_out.double())
    got = value_and_grads(lambda *t: selective_scan(*t, chunk_size=16), inputs, grad_out)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g.double(), e, rtol=1e-4, atol=1e-4)


def test_scan_split_over_worker_threads_equals_sequential(monkeypatch: pytest.MonkeyPatch) -> None:
    """One sequence per tile and two workers: every block boundary and the dA reduction across
    workers are exercised, and the caller's thread count comes back."""
    monkeypatch.setattr(mamba_module, "TILE_ELEMENTS", 1)
    inputs = scan_inputs(5, 37, 3, 4, torch.float64, seed=5)
    grad_out = torch.randn(5, 37, 3, dtype=torch.float64)
    expected = value_and_grads(selective_scan_sequential, inputs, grad_out)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        got = value_and_grads(lambda *t: selective_scan(*t, chunk_size=8), inputs, grad_out)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-9, atol=1e-10)


def test_chunked_scan_passes_gradcheck() -> None:
    inputs = scan_inputs(2, 11, 3, 2, torch.float64, seed=2)
    assert torch.autograd.gradcheck(lambda *t: selective_scan(*t, chunk_size=4), inputs)


def test_chunked_scan_is_stable_under_extreme_decay() -> None:
    """dt |A| up to ~6000 per step: decays underflow to 0 instead of anything overflowing."""
    u, dt, a, b, c = scan_inputs(2, 40, 4, 8, torch.float32, seed=3)
    with torch.no_grad():
        dt.mul_(100.0)
        a.mul_(8.0)
    y = selective_scan(u, dt, a, b, c, chunk_size=16)
    y.sum().backward()
    assert all(torch.isfinite(t).all() for t in (y, u.grad, dt.grad, a.grad, b.grad, c.grad))
    expected = selective_scan_sequential(*(t.detach().double() for t in (u, dt, a, b, c)))
    torch.testing.assert_close(y.detach().double(), expected, rtol=1e-4, atol=1e-4)


def test_linear_scan_solves_the_recurrence_for_any_length() -> None:
    gen = torch.Generator().manual_seed(4)
    for n in [1, 2, 3, 7, 16, 33]:
        a = torch.rand(2, n, 3, generator=gen, dtype=torch.float64)
        b = torch.randn(2, n, 3, generator=gen, dtype=torch.float64)
        h, expected = torch.zeros(2, 3, dtype=torch.float64), []
        for t in range(n):
            h = a[:, t] * h + b[:, t]
            expected.append(h)
        got = b.clone()
        linear_scan_(a.clone(), got)
        torch.testing.assert_close(got, torch.stack(expected, dim=1), rtol=1e-12, atol=1e-12)


def test_chunk_size_must_be_positive() -> None:
    with pytest.raises(ZooError, match="chunk_size"):
        selective_scan(*scan_inputs(1, 4, 2, 2, torch.float32), chunk_size=0)


# ---------------------------------------------------------------- the Mamba mixer


def test_mamba_mixer_equals_the_mixer_with_the_sequential_scan(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    mixer = MambaMixer(16, 8, chunk_size=8).double()
    x = torch.randn(2, 37, 16, dtype=torch.float64, requires_grad=True)
    got = mixer(x)
    got_grads = torch.autograd.grad(got.square().sum(), [x, *mixer.parameters()])
    monkeypatch.setattr(
        mamba_module, "selective_scan", lambda u, dt, a, b, c, chunk_size: selective_scan_sequential(u, dt, a, b, c)
    )
    expected = mixer(x)
    expected_grads = torch.autograd.grad(expected.square().sum(), [x, *mixer.parameters()])
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-10)
    for g, e in zip(got_grads, expected_grads):
        torch.testing.assert_close(g, e, rtol=1e-9, atol=1e-10)


def test_mamba_init_follows_mamba_1() -> None:
    torch.manual_seed(0)
    mixer = MambaMixer(40, 6)
    assert mixer.d_inner == 80 and mixer.dt_rank == math.ceil(40 / 16)
    assert mixer.in_proj.out_features == 160 and mixer.conv.kernel_size == (4,) and mixer.conv.groups == 80
    torch.testing.assert_close(-torch.exp(mixer.a_log), -torch.arange(1.0, 7.0).repeat(80, 1))
    dt_at_zero_input = F.softplus(mixer.dt_proj.bias)
    assert dt_at_zero_input.min() >= 1e-3 * 0.999 and dt_at_zero_input.max() <= 1e-1 * 1.001
    torch.testing.assert_close(mixer.d, torch.ones(80))


def test_mamba_core_is_the_gated_ssm_output() -> None:
    """core = (scan(u) + D u) * silu(z) with u = silu(causal conv(x-half of in_proj)), written out here."""
    torch.manual_seed(0)
    mixer = MambaMixer(8, 4, chunk_size=5).double()
    x = torch.randn(2, 13, 8, dtype=torch.float64)
    xu, z = mixer.in_proj(x).chunk(2, dim=-1)
    w, bias = mixer.conv.weight[:, 0], mixer.conv.bias  # (d_inner, 4): w[:, 3] multiplies the current step
    padded = F.pad(xu, (0, 0, 3, 0))
    u = F.silu(bias + sum(padded[:, k : k + 13] * w[:, k] for k in range(4)))
    proj = u @ mixer.x_proj.weight.T
    dt = F.softplus(proj[..., :1] @ mixer.dt_proj.weight.T + mixer.dt_proj.bias)
    y = selective_scan_sequential(u, dt, -torch.exp(mixer.a_log), proj[..., 1:5], proj[..., 5:9]) + mixer.d * u
    torch.testing.assert_close(mixer.core(x), y * F.silu(z), rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------- both: AdS, causality, presets


def small(arch: str, ads: str = "none") -> torch.nn.Module:
    torch.manual_seed(0)
    return MambaMixer(16, 8, ads=ads, chunk_size=8) if arch == "mamba" else S5Mixer(16, 8, ads=ads)


@pytest.mark.parametrize("arch", ["s5", "mamba"])
def test_ads_tanh_gates_the_ssm_output_before_out_proj(arch: str) -> None:
    mixer = small(arch, "tanh")
    assert isinstance(mixer.ads, AdaptiveScaling) and mixer.ads.scale.in_features == mixer.d_inner
    x = torch.randn(2, 21, 16)
    y = mixer.core(x)
    gated = torch.tanh(mixer.ads.scale(y)) * y + torch.tanh(mixer.ads.shift(y))
    torch.testing.assert_close(mixer(x), mixer.out_proj(gated))


@pytest.mark.parametrize("arch", ["s5", "mamba"])
@pytest.mark.parametrize("ads", ["none", "tanh"])
def test_outputs_up_to_t0_ignore_later_inputs(arch: str, ads: str) -> None:
    mixer = small(arch, ads)
    x = torch.randn(2, 37, 16, requires_grad=True)
    t0 = 19  # inside the third chunk of 8
    changed = x.detach().clone()
    changed[:, t0 + 1 :] += torch.randn(2, 37 - t0 - 1, 16)
    y, y_changed = mixer(x), mixer(changed)
    torch.testing.assert_close(y[:, : t0 + 1], y_changed[:, : t0 + 1], rtol=1e-6, atol=1e-6)
    assert (y[:, t0 + 1 :] - y_changed[:, t0 + 1 :]).abs().min() > 0
    (grad,) = torch.autograd.grad(y[:, : t0 + 1].sum(), x)
    # Exactly zero for the scan; the FFT convolution (S5) leaves float32 rounding (~1e-9).
    assert grad[:, t0 + 1 :].abs().max() < 1e-6 * grad[:, : t0 + 1].abs().max()
    assert grad[:, : t0 + 1].abs().min() > 0


@pytest.mark.parametrize(("arch", "d_state", "d_inner"), [("s5", 128, 128), ("mamba", 32, 256)])
def test_mnist_presets_build_and_train_a_step(arch: str, d_state: int, d_inner: int) -> None:
    torch.manual_seed(0)
    model = build_model(arch, "digits")
    mixer = model.blocks[0].mixer
    assert (len(model.blocks), mixer.d_model, mixer.d_inner) == (2, 128, d_inner)
    assert (mixer.d_state if arch == "mamba" else mixer.lambda_imag.numel() * 2) == d_state
    images = torch.rand(4, 1, 8, 8, requires_grad=True)
    F.cross_entropy(model(images), torch.arange(4)).backward()
    assert torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0
