"""S4 and DSS: each FFT-convolution layer equals the recurrence of the system it claims to be.

The references here are written from the definitions (dense matrices, explicit loops and sums),
not from the layers' closed forms, so a wrong Woodbury term, frequency grid or normalization fails.
"""

from __future__ import annotations

import math

import pytest
import torch
from ssm_reference import bilinear_nplr_channel, with_conjugates

from model_zoo import build_model
from model_zoo.layers.dss import DSSMixer
from model_zoo.layers.s4 import S4Mixer, legs_nplr

H, N, L, BATCH = 4, 8, 33, 2  # odd L: the last rfft bin is not Nyquist; even L is tested too


def legs_dense(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """HiPPO-LegS from its closed form: A[n,k] = -sqrt((2n+1)(2k+1)) (n>k), -(n+1) (n=k), 0 (n<k)."""
    a = torch.zeros(n, n, dtype=torch.float64)
    for i in range(n):
        for k in range(i + 1):
            a[i, k] = -(i + 1) if i == k else -math.sqrt((2 * i + 1) * (2 * k + 1))
    b = torch.tensor([math.sqrt(2 * i + 1) for i in range(n)], dtype=torch.float64)
    return a, b


def perturbed_s4(d_model: int, d_state: int, seed: int) -> S4Mixer:
    """A float64 S4 layer moved away from its init, with a few large steps dt to exercise the kernel."""
    torch.manual_seed(seed)
    layer = S4Mixer(d_model, d_state).double()
    with torch.no_grad():
        for param in (layer.p, layer.b, layer.lambda_imag, layer.log_neg_lambda_real):
            param.add_(0.3 * torch.randn_like(param))
        layer.log_dt[0] = math.log(0.5)
    return layer


def s4_recurrence(layer: S4Mixer, u: torch.Tensor) -> torch.Tensor:
    """The layer's NPLR system (as `nplr_system` reports it) run channel by channel as a dense recurrence."""
    system = layer.nplr_system()
    out = torch.empty_like(u)
    for h in range(u.shape[2]):
        lam, p, b, c_tilde = (with_conjugates(system[k][h]) for k in ("lam", "p", "b", "c_tilde"))
        out[:, :, h] = bilinear_nplr_channel(lam, p, b, c_tilde, system["dt"][h], layer.d[h], u[:, :, h])
    return out


@pytest.mark.parametrize("length", [L, 32])
def test_s4_fft_convolution_equals_bilinear_recurrence(length: int) -> None:
    layer = perturbed_s4(H, N, seed=0)
    u = torch.randn(BATCH, length, H, dtype=torch.float64)
    with torch.no_grad():
        fast = layer.core(u)
        slow = s4_recurrence(layer, u)
    torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-8)


def test_s4_float32_kernel_close_to_float64() -> None:
    layer = perturbed_s4(H, 32, seed=1)
    reference = layer.kernel(784)
    single = layer.float().kernel(784).double()
    assert (single - reference).abs().max() < 1e-3 * reference.abs().max()


def test_nplr_reproduces_hippo_legs() -> None:
    a_legs, b_legs = legs_dense(N)
    nplr = legs_nplr(N)
    v = torch.cat([nplr.v, nplr.v.conj()], dim=1)
    torch.testing.assert_close(v.conj().T @ v, torch.eye(N, dtype=v.dtype), rtol=0, atol=1e-12)
    p, lam = with_conjugates(nplr.p), with_conjugates(nplr.lam)
    a = v @ (torch.diag(lam) - torch.outer(p, p.conj())) @ v.conj().T
    torch.testing.assert_close(a, a_legs.to(a.dtype), rtol=0, atol=1e-10)
    torch.testing.assert_close(v @ with_conjugates(nplr.b), b_legs.to(a.dtype), rtol=0, atol=1e-10)


def test_s4_layer_init_is_the_legs_nplr() -> None:
    """Every channel starts at the decomposition; in float64 its A is similar to LegS (eigs -1..-N).

    The eigenvalue check needs float64 parameters: LegS is far from normal, so float32 rounding of
    Lambda and P alone moves its eigenvalues by ~1e-2.
    """
    nplr = legs_nplr(N)
    system = S4Mixer(3, N).nplr_system()
    for key in ("lam", "p", "b"):
        expected = getattr(nplr, key).to(torch.complex64).expand(3, -1)
        torch.testing.assert_close(system[key], expected, rtol=1e-6, atol=1e-6)
    lam, p = with_conjugates(nplr.lam), with_conjugates(nplr.p)
    eig = torch.linalg.eigvals(torch.diag(lam) - torch.outer(p, p.conj()))
    torch.testing.assert_close(eig.real.sort().values, -torch.arange(N, 0, -1, dtype=torch.float64), rtol=0, atol=1e-6)
    assert eig.imag.abs().max() < 1e-6


def test_dss_init_is_normal_part_of_legs() -> None:
    a_legs, _ = legs_dense(N)
    half_root = torch.sqrt(torch.arange(N, dtype=torch.float64) + 0.5)
    normal = a_legs + torch.outer(half_root, half_root)
    eig = torch.linalg.eigvals(normal)
    expected = eig[eig.imag > 0]
    lam = torch.view_as_complex(DSSMixer(H, N).lam.double())
    torch.testing.assert_close(lam.imag.sort().values, expected.imag.sort().values, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lam.real, torch.full_like(lam.real, -0.5), rtol=0, atol=1e-6)


def dss_recurrence(layer: DSSMixer, u: torch.Tensor) -> torch.Tensor:
    """x_k = exp(dt Lambda) x_{k-1} + u_k, y_k = Re(sum_n C_n x_k,n) + D u_k, per channel.

    C_n = W_n / (Lambda_n S_n) with S_n = sum_{r<L} exp(dt Lambda_n r) summed term by term.
    """
    system = layer.diagonal_system()
    length = u.shape[1]
    positions = torch.arange(length, dtype=torch.float64)
    out = torch.empty_like(u)
    for h in range(u.shape[2]):
        x = system["dt"][h] * system["lam"]
        total = torch.exp(x[:, None] * positions).sum(dim=1)
        c = system["w"][h] / (system["lam"] * total)
        state = torch.zeros(u.shape[0], x.shape[0], dtype=x.dtype)
        for k in range(length):
            state = state * torch.exp(x) + u[:, k, h, None]
            out[:, k, h] = (state @ c).real + layer.d[h] * u[:, k, h]
    return out


def test_dss_fft_convolution_equals_diagonal_recurrence() -> None:
    torch.manual_seed(2)
    layer = DSSMixer(H, N).double()
    with torch.no_grad():
        layer.log_dt[0] = math.log(0.3)
        layer.lam[0, 0] = 0.8  # growing modes take the other branch of the stable softmax
        layer.lam[2, 0] = 0.05
    u = torch.randn(BATCH, L, H, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(layer.core(u), dss_recurrence(layer, u), rtol=1e-4, atol=1e-10)


def test_dss_softmax_stays_finite_for_long_growing_modes() -> None:
    layer = DSSMixer(2, N)
    with torch.no_grad():
        layer.lam[:, 0] = 5.0
        layer.log_dt.fill_(math.log(0.1))
    kernel = layer.kernel(4096)
    assert torch.isfinite(kernel).all() and kernel.abs().max() < 1e3


@pytest.mark.parametrize("cls", [S4Mixer, DSSMixer])
@pytest.mark.parametrize("ads", ["none", "tanh"])
def test_shapes_and_causality(cls: type, ads: str) -> None:
    torch.manual_seed(3)
    layer = cls(16, 8, ads=ads)
    x = torch.randn(3, 40, 16)
    y = layer(x)
    assert y.shape == (3, 40, 16)
    assert layer.kernel(40).shape == (16, 40)
    t0 = 25
    changed = x.clone()
    changed[:, t0 + 1 :] = torch.randn(3, 40 - t0 - 1, 16)
    y_changed = layer(changed)
    torch.testing.assert_close(y_changed[:, : t0 + 1], y[:, : t0 + 1], rtol=1e-5, atol=1e-5)
    assert (y_changed[:, t0 + 1 :] - y[:, t0 + 1 :]).abs().max() > 1e-3


@pytest.mark.parametrize("cls", [S4Mixer, DSSMixer])
def test_ads_gates_the_ssm_output(cls: type) -> None:
    torch.manual_seed(4)
    plain = cls(16, 8)
    gated = cls(16, 8, ads="tanh")
    gated.load_state_dict(plain.state_dict(), strict=False)
    x = torch.randn(2, 20, 16)
    ssm = plain.core(x)
    expected = plain.out_proj(torch.tanh(gated.ads.scale(ssm)) * ssm + torch.tanh(gated.ads.shift(ssm)))
    torch.testing.assert_close(gated(x), expected)


def test_odd_d_state_is_refused() -> None:
    from model_zoo.errors import ZooError

    with pytest.raises(ZooError, match="even d_state"):
        S4Mixer(4, 7)


@pytest.mark.parametrize("arch", ["s4", "dss"])
def test_build_model_forward_backward(arch: str) -> None:
    torch.manual_seed(5)
    model = build_model(arch, "digits", ads="tanh", d_model=16, d_state=8)
    logits = model(torch.rand(4, 1, 8, 8))
    assert logits.shape == (4, 10)
    logits.square().sum().backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
    mixer = model.blocks[0].mixer
    grads = [mixer.log_dt.grad, *(p.grad for n, p in mixer.named_parameters() if n in ("p", "b", "c", "lam", "w"))]
    assert all(g.abs().sum() > 0 for g in grads)
