"""mamba-ssm's fused CUDA scan against our pure-PyTorch scan (runs only where both exist)."""

from __future__ import annotations

import pytest
import torch

from model_zoo.layers import mamba

needs_fused = pytest.mark.skipif(
    not torch.cuda.is_available() or mamba.mamba_ssm_scan() is None,
    reason="needs CUDA and the optional mamba-ssm package (pip install -e '.[cuda]')",
)


def test_cpu_inputs_never_use_the_fused_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args, **kwargs):
        raise AssertionError("the CUDA kernel must not be used for CPU tensors")

    monkeypatch.setattr(mamba, "mamba_ssm_scan", lambda: fail)
    torch.manual_seed(0)
    u, dt = torch.randn(2, 9, 4), torch.rand(2, 9, 4) * 0.1
    a, b, c = -torch.rand(4, 3), torch.randn(2, 9, 3), torch.randn(2, 9, 3)
    torch.testing.assert_close(mamba.selective_scan(u, dt, a, b, c, 4), mamba.selective_scan_sequential(u, dt, a, b, c))


@needs_fused
def test_fused_cuda_scan_equals_the_pure_pytorch_scan() -> None:
    torch.manual_seed(0)
    shapes = {"u": (2, 100, 8), "dt": (2, 100, 8), "b": (2, 100, 16), "c": (2, 100, 16)}
    u, b, c = (torch.randn(*shapes[k], device="cuda", requires_grad=True) for k in ("u", "b", "c"))
    dt = (torch.rand(*shapes["dt"], device="cuda") * 0.1).requires_grad_()
    a = (-torch.rand(8, 16, device="cuda") - 0.1).requires_grad_()
    fused = mamba.selective_scan(u, dt, a, b, c, 32)
    reference = mamba._SelectiveScan.apply(*(t.cpu() for t in (u, dt, a, b, c)), 32)
    torch.testing.assert_close(fused.cpu(), reference, rtol=1e-4, atol=1e-4)
    grads_fused = torch.autograd.grad(fused.sum(), (u, dt, a, b, c))
    grads_ref = torch.autograd.grad(reference.sum(), (u, dt, a, b, c))
    for got, want in zip(grads_fused, grads_ref):
        torch.testing.assert_close(got.cpu(), want.cpu(), rtol=1e-3, atol=1e-3)
