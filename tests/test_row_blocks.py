"""Passes through frozen weights run in blocks of batch rows (model_zoo/classifier.py): the same
logits, input gradients and recorded activations as the whole batch at once (to float rounding: a
GEMM over fewer rows may take another kernel), and never in training."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from model_zoo import build_model, classifier
from model_zoo.frozen import frozen_weights
from ssmbench.analysis import component_sites, record

SMALL = {"d_model": 16, "d_state": 8, "n_layers": 2}
BLOCKED = ["s4", "dss", "s4d", "s5", "mega"]
ROWS = 3  # blocks of 3 over a batch of 8: two full blocks and a short one


def blocks_of(rows: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(classifier, "FROZEN_BLOCK_FLOATS", rows * 64 * SMALL["d_model"])  # digits: 64 tokens


def encoder_calls(model: torch.nn.Module) -> list[int]:
    calls = [0]
    model.encoder.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def logits_and_input_gradient(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.clone().requires_grad_()
    logits = model(x)
    (grad,) = torch.autograd.grad(F.cross_entropy(logits, y), x)
    return logits.detach(), grad


@pytest.mark.parametrize("arch", BLOCKED)
@pytest.mark.parametrize("frozen_by", ["eval", "frozen_weights"])
def test_blocks_give_the_whole_batch_results(arch: str, frozen_by: str, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    model = build_model(arch, "digits", ads="tanh" if arch != "mega" else "none", **SMALL)
    model.train(frozen_by != "eval")
    x, y = torch.rand(8, 1, 8, 8), torch.randint(0, 10, (8,))
    calls = encoder_calls(model)
    results = {}
    for rows in (ROWS, 8):
        blocks_of(rows, monkeypatch)
        with frozen_weights(model) if frozen_by == "frozen_weights" else torch.enable_grad():
            assert model.frozen_block_rows(x) == rows
            calls[0] = 0
            results[rows] = logits_and_input_gradient(model, x, y)
            assert calls[0] == -(-8 // rows)  # one encoder call per block
    for blocked, whole in zip(results[ROWS], results[8]):
        torch.testing.assert_close(blocked, whole, rtol=1e-5, atol=1e-8)


def test_training_passes_and_mamba_run_the_whole_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    blocks_of(ROWS, monkeypatch)
    x = torch.rand(8, 1, 8, 8)
    trained = build_model("s4", "digits", **SMALL).train()
    calls = encoder_calls(trained)
    trained(x)
    assert calls == [1] and trained.frozen_block_rows(x) == 8
    mamba = build_model("mamba", "digits", **SMALL).eval()
    assert mamba.frozen_block_rows(x) == 8


def test_recorded_activations_join_the_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    model = build_model("s4", "digits", ads="tanh", **SMALL).eval()
    x = torch.rand(8, 1, 8, 8)
    sites = component_sites(model)
    blocks_of(ROWS, monkeypatch)
    blocked = record(model, x, sites)
    blocks_of(8, monkeypatch)
    whole = record(model, x, sites)
    assert blocked.keys() == whole.keys()
    for key, tensor in whole.items():
        assert tensor.shape[0] == 8
        torch.testing.assert_close(blocked[key], tensor, rtol=1e-5, atol=1e-7)
