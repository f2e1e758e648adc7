"""Fixtures shared by the attack, evaluation and check tests: one small trained digits model."""

from __future__ import annotations

import os

# Set before torch is imported (pytest loads this file first): the suite trains many small models
# and spawns worker processes (torchrun ranks, concurrent leaderboard writers) on a 2-core CI
# machine, where several multi-threaded OpenMP pools spinning at once stall each other.
os.environ.setdefault("OMP_NUM_THREADS", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import ssmbench  # noqa: E402
from model_zoo import build_model, checkpoints  # noqa: E402
from ssmbench.data import load_split  # noqa: E402


def train_digits_s4d(cache: Path, epochs: int = 25) -> nn.Module:
    """A tiny S4D trained with plain Adam on digits (25 epochs: ~84% clean, ~62% PGD-10 at 8/255).

    Saved under the session's temp dir, so each epoch count is trained once per test session.
    """
    path = cache / f"st-s4d-d32-digits-{epochs}.safetensors"
    if not path.exists():
        torch.manual_seed(0)
        x, y = load_split("digits", "train")
        model = build_model("s4d", "digits", d_model=32, d_state=16, n_layers=1)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        for _ in range(epochs):
            for idx in torch.randperm(len(x)).split(64):
                optimizer.zero_grad()
                F.cross_entropy(model(x[idx]), y[idx]).backward()
                optimizer.step()
        checkpoints.save(model, path, checkpoints.CheckpointMeta(config=model.config, training={"method": "st"}, kind="best"))
    return ssmbench.load(path)


@pytest.fixture(autouse=True)
def user_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test's own $SSMBENCH_HOME: a command run without --leaderboard records there, never
    in the tester's data directory."""
    home = tmp_path / "ssmbench-home"
    monkeypatch.setenv("SSMBENCH_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def trained_digits_model(tmp_path_factory: pytest.TempPathFactory):
    """Call with an epoch count (default 25) to get the cached trained model."""
    return lambda epochs=25: train_digits_s4d(tmp_path_factory.getbasetemp(), epochs)


@pytest.fixture(scope="module")
def model(trained_digits_model) -> nn.Module:
    return trained_digits_model()


@pytest.fixture(scope="module")
def test_set() -> tuple[torch.Tensor, torch.Tensor]:
    return load_split("digits", "test")
