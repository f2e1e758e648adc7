"""Eval-mode kernel caching: same numbers, computed once, never stale."""

from __future__ import annotations

import pytest
import torch

from model_zoo import build_model

SMALL = {"d_model": 16, "d_state": 8, "n_layers": 2}
# (arch, overrides): every LTI mixer, and S4/DSS as the seed study's released code configured them.
LTI = [
    pytest.param(arch, {**SMALL, **extra}, id=name)
    for name, arch, extra in [
        ("s4", "s4", {}),
        ("s4-released", "s4", {"mixer_options": {"n_ssm": 1, "train_real": False}}),
        ("dss", "dss", {}),
        ("dss-released", "dss", {"mixer_options": {"w_init": "legs_b", "detach_max": True}}),
        ("s4d", "s4d", {}),
        ("s5", "s5", {}),
    ]
]


def count_kernel_builds(model: torch.nn.Module, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls = [0]
    for mixer in (block.mixer for block in model.blocks):
        name = "_state_operators" if hasattr(mixer, "_state_operators") else "kernel"
        original = getattr(mixer, name)

        def counted(*args, _original=original, **kwargs):
            calls[0] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(mixer, name, counted)
    return calls


@pytest.mark.parametrize(("arch", "small"), LTI)
def test_cached_eval_forward_equals_uncached_and_builds_the_kernel_once(arch: str, small: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    model = build_model(arch, "digits", **small)
    images = torch.rand(4, 1, 8, 8)
    uncached = model.train()(images)  # no dropout/BN anywhere, so train and eval compute the same
    calls = count_kernel_builds(model, monkeypatch)
    model.eval()
    outputs = [model(images) for _ in range(3)]
    for out in outputs:
        torch.testing.assert_close(out, uncached, rtol=1e-5, atol=1e-6)
    assert calls[0] == 2  # once per layer, not once per forward pass


@pytest.mark.parametrize(("arch", "small"), LTI)
def test_input_gradients_flow_through_the_cached_kernel(arch: str, small: dict) -> None:
    torch.manual_seed(0)
    model = build_model(arch, "digits", **small)
    images = torch.rand(3, 1, 8, 8, requires_grad=True)
    model.train()(images).sum().backward()
    expected = images.grad.clone()
    images.grad = None
    model.eval()
    model(images)  # fill the cache
    model(images).sum().backward()
    torch.testing.assert_close(images.grad, expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(("arch", "small"), LTI)
def test_optimizer_step_invalidates_the_cache(arch: str, small: dict) -> None:
    torch.manual_seed(0)
    model = build_model(arch, "digits", **small)
    images = torch.rand(4, 1, 8, 8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    model.eval()
    before = model(images)
    model(images).logsumexp(1).sum().backward()  # parameter grads (head, norms) even in eval
    model.train()
    loss = model(images).logsumexp(1).sum()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    model.eval()
    after_cached = model(images)
    fresh = build_model(arch, "digits", **small)
    fresh.load_state_dict(model.state_dict())
    expected = fresh.eval()(images)
    assert not torch.allclose(before, after_cached)
    torch.testing.assert_close(after_cached, expected)


@pytest.mark.parametrize(("arch", "small"), LTI)
def test_load_state_dict_invalidates_the_cache(arch: str, small: dict) -> None:
    torch.manual_seed(0)
    model = build_model(arch, "digits", **small).eval()
    other = build_model(arch, "digits", **small).eval()
    images = torch.rand(4, 1, 8, 8)
    model(images)  # cache model's own kernels
    model.load_state_dict(other.state_dict())
    torch.testing.assert_close(model(images), other(images))



@pytest.mark.parametrize("needs", [(True, True), (True, False), (False, True)], ids=["u-and-k", "u-only", "k-only"])
def test_fft_causal_conv_backward_is_the_exact_adjoint(needs: tuple[bool, bool]) -> None:
    """The hand-written backward (causal correlation by FFT) against finite differences, and the
    forward against the convolution sum itself, in float64; leading batch dims are summed for k."""
    from torch.autograd import gradcheck

    from model_zoo.layers.base import FFTCausalConv, fft_size

    torch.manual_seed(0)
    u = torch.randn(2, 3, 4, 13, dtype=torch.float64, requires_grad=needs[0])
    k = torch.randn(4, 13, dtype=torch.float64, requires_grad=needs[1])
    n = fft_size(13)

    def conv(u: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return FFTCausalConv.apply(u, k, torch.fft.rfft(k.detach(), n=n), n)

    direct = torch.stack([sum(k[:, s] * u[..., t - s] for s in range(t + 1)) for t in range(13)], dim=-1)
    torch.testing.assert_close(conv(u, k), direct, rtol=1e-12, atol=1e-12)
    assert gradcheck(conv, (u, k))


def test_fft_causal_conv_in_blocks_equals_the_whole_batch_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks of 2 rows over 5 (the last one short): outputs and input gradients bit-identical to
    one block holding the whole batch, the kernel gradient equal to rounding, and gradcheck passes."""
    from torch.autograd import gradcheck

    from model_zoo.layers import base
    from model_zoo.layers.base import FFTCausalConv, fft_block_rows, fft_size

    torch.manual_seed(0)
    length, channels = 13, 4
    n = fft_size(length)
    u = torch.randn(5, channels, length, dtype=torch.float64, requires_grad=True)
    k = torch.randn(channels, length, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(5, channels, length, dtype=torch.float64)

    def conv(u: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return FFTCausalConv.apply(u, k, torch.fft.rfft(k.detach(), n=n), n)

    results = {}
    for rows in (2, 5):
        monkeypatch.setattr(base, "FFT_BLOCK_FLOATS", rows * channels * n)
        assert fft_block_rows(channels, n) == rows
        y = conv(u, k)
        results[rows] = (y.detach(), *torch.autograd.grad((y * weight).sum(), (u, k)))
    assert torch.equal(results[2][0], results[5][0])
    assert torch.equal(results[2][1], results[5][1])
    torch.testing.assert_close(results[2][2], results[5][2], rtol=1e-12, atol=1e-12)
    monkeypatch.setattr(base, "FFT_BLOCK_FLOATS", 2 * channels * n)
    assert gradcheck(conv, (u, k))
