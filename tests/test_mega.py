"""Mega: the FFT EMA against its recurrence, the attention against a hand-written closed form."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

import model_zoo
from model_zoo.errors import ZooError
from model_zoo.layers import get_mixer
from model_zoo.layers.mega import DampedEMA, MegaMixer


def ema_recurrence(x: torch.Tensor, ema: DampedEMA, rows: slice) -> torch.Tensor:
    """Step-by-step h_t = alpha beta x_t + (1 - alpha delta) h_{t-1}, y_t = eta . h_t / sqrt(n).

    x: (B, L, D); rows selects the parameter rows of one direction. Returns (B, L, D).
    """
    alpha = torch.sigmoid(ema.alpha_logit[rows]).double()
    delta = torch.sigmoid(ema.delta_logit[rows]).double()
    beta, eta = ema.beta[rows].double(), ema.eta[rows].double()
    n = alpha.shape[1]
    h = torch.zeros(x.shape[0], *alpha.shape, dtype=torch.float64)
    out = []
    for t in range(x.shape[1]):
        h = alpha * beta * x[:, t, :, None].double() + (1 - alpha * delta) * h
        out.append((eta * h).sum(-1) / math.sqrt(n))
    return torch.stack(out, dim=1)


def perturbed_ema(d_model: int, d_state: int, bidirectional: bool) -> DampedEMA:
    """An EMA with spread-out decays, so that a wrong power or index shows up in the output."""
    torch.manual_seed(0)
    ema = DampedEMA(d_model, d_state, bidirectional)
    with torch.no_grad():
        ema.alpha_logit.uniform_(-2.0, 2.0)
        ema.delta_logit.uniform_(-2.0, 2.0)
        ema.beta.normal_()
    return ema


@pytest.mark.parametrize("bidirectional", [False, True])
def test_ema_fft_equals_recurrence(bidirectional: bool) -> None:
    d_model, length = 6, 37
    ema = perturbed_ema(d_model, 5, bidirectional)
    x = torch.randn(3, length, d_model)
    expected = ema_recurrence(x, ema, slice(0, d_model))
    if bidirectional:
        # The backward EMA is the same recurrence run on the reversed sequence, reversed back.
        expected = expected + ema_recurrence(x.flip(1), ema, slice(d_model, 2 * d_model)).flip(1)
    expected = F.silu(expected + ema.omega.double() * x.double())
    torch.testing.assert_close(ema(x).double(), expected, rtol=1e-4, atol=1e-5)


def scrambled_mixer(seed: int, d_model: int, **options: int | bool) -> MegaMixer:
    """A mixer with every parameter ~ N(0, 1): at the released init (std 0.02) the attention's
    contribution is ~1e-6, too small to tell a wrong term from rounding."""
    torch.manual_seed(seed)
    mixer = MegaMixer(d_model, **options)
    with torch.no_grad():
        for p in mixer.parameters():
            p.normal_()
    return mixer


def test_unidirectional_ema_is_causal_and_layer_is_not() -> None:
    mixer = scrambled_mixer(1, 8, d_state=4, hidden=8, z_dim=8, bidirectional=False, max_len=32)
    x = torch.randn(2, 20, 8)
    x_later = x.clone()
    t0 = 11
    x_later[:, t0 + 1 :] += torch.randn(2, 20 - t0 - 1, 8)
    with torch.no_grad():
        torch.testing.assert_close(mixer.ema(x_later)[:, : t0 + 1], mixer.ema(x)[:, : t0 + 1], rtol=0, atol=1e-5)
        early_change = (mixer(x_later)[:, : t0 + 1] - mixer(x)[:, : t0 + 1]).abs().max()
    assert early_change > 1e-4


def test_bidirectional_ema_sees_the_future() -> None:
    ema = perturbed_ema(4, 3, bidirectional=True)
    x = torch.randn(1, 10, 4)
    x_later = x.clone()
    x_later[:, -1] += 1.0
    with torch.no_grad():
        assert (ema(x_later)[:, 0] - ema(x)[:, 0]).abs().max() > 1e-4


def test_layer_equals_closed_form() -> None:
    """Everything after the EMA, written out for L = 5 with explicit loops over query/key pairs."""
    d_model, hidden, z_dim, length, max_len = 4, 3, 6, 5, 8
    mixer = scrambled_mixer(2, d_model, d_state=2, hidden=hidden, z_dim=z_dim, max_len=max_len)
    x = torch.randn(1, length, d_model)
    with torch.no_grad():
        actual = mixer(x)[0].double()
        xe = mixer.ema(x)[0].double()
    x0 = x[0].double()
    w = {name: p.detach().double() for name, p in mixer.named_parameters()}
    proj = xe @ w["mx_proj.weight"].T + w["mx_proj.bias"]
    phi = torch.sigmoid(proj[:, :d_model])
    z = F.silu(proj[:, d_model : d_model + z_dim])
    r = F.silu(proj[:, d_model + z_dim : d_model + z_dim + hidden])
    h_in = proj[:, d_model + z_dim + hidden :]
    q = z * w["qk_scale"][0] + w["qk_offset"][0]
    k = z * w["qk_scale"][1] + w["qk_offset"][1]
    v = F.silu(x0 @ w["v_proj.weight"].T + w["v_proj.bias"])
    bias = w["position_bias.weight"]
    o = torch.zeros(length, hidden, dtype=torch.float64)
    for i in range(length):
        scores = [float(q[i] @ k[j]) / math.sqrt(z_dim) + float(bias[max_len - 1 + j - i]) for j in range(length)]
        top = max(scores)
        weights = [math.exp(s - top) for s in scores]
        total = sum(weights)
        for j in range(length):
            o[i] += weights[j] / total * v[j]
    h = F.silu(h_in + (r * o) @ w["h_proj.weight"].T)
    expected = phi * h + (1 - phi) * x0
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)


def test_shapes_gradients_and_length_limit() -> None:
    torch.manual_seed(3)
    mixer = MegaMixer(16, d_state=4, hidden=8, z_dim=8, max_len=24)
    x = torch.randn(2, 24, 16, requires_grad=True)
    y = mixer(x)
    assert y.shape == (2, 24, 16)
    y.square().mean().backward()
    grads = [x.grad] + [p.grad for p in mixer.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert x.grad.abs().sum() > 0
    with pytest.raises(ZooError, match="max_len 24"):
        mixer(torch.randn(1, 25, 16))


def test_registry_spec_and_digits_model_trains_a_step() -> None:
    spec = get_mixer("mega")
    assert (spec.cls, spec.causal, spec.supports_ads, spec.residual) == (MegaMixer, False, False, False)
    torch.manual_seed(4)
    model = model_zoo.build_model("mega", "digits")
    assert model.blocks[0].mixer.ema.d_state == 16 and model.blocks[0].mixer.hidden == 32
    images = torch.rand(4, 1, 8, 8)
    logits = model(images)
    assert logits.shape == (4, 10)
    F.cross_entropy(logits, torch.tensor([0, 1, 2, 3])).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
