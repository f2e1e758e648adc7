"""Mixer plugins: the example package examples/ssmbench-lru, installed for real, found by its entry point.

The plugin is pip-installed (no deps, no build isolation: seconds) into a temporary target folder,
so the test venv is never changed; processes that get that folder on PYTHONPATH see its
distribution and its `ssmbench.mixers` entry point exactly as after `pip install`, the others do
not: that is the installed / uninstalled pair. Everything runs through the CLI in subprocesses.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from model_zoo.layers import MIXERS

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "ssmbench-lru"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example plugin installed into a folder of its own (built from a copy: the checkout stays clean)."""
    work = tmp_path_factory.mktemp("plugin")
    source = shutil.copytree(EXAMPLE, work / "src")
    target = work / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(target), str(source)], check=True, capture_output=True, timeout=300)
    return target


def _ssmbench(args: list[str], cwd: Path, plugin: Path | None) -> subprocess.CompletedProcess[str]:
    paths = [str(plugin)] if plugin is not None else []
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([*paths, str(ROOT)]), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "ssmbench", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_the_example_plugin_trains_saves_loads_by_name_and_fails_cleanly_without_it(site, tmp_path) -> None:
    run = tmp_path / "run"
    trained = _ssmbench(["train", "lru", "--at", "st", "--dataset", "digits", "--epochs", "1", "--train-examples", "64",
                         "--eval-examples", "16", "--batch-size", "32", "--mixer-options", '{"r_min": 0.5}',
                         "--out", str(run)], tmp_path, site)
    assert trained.returncode == 0, trained.stderr
    checkpoint = run / "last.safetensors"
    with safe_open(str(checkpoint), "pt") as handle:
        meta = json.loads(handle.metadata()["ssmbench"])
    assert meta["plugin"] == {"distribution": "ssmbench-lru", "version": "0.1.0"}
    assert (meta["arch"], meta["config"]["mixer_options"]) == ("lru", {"r_min": 0.5})
    evaluated = _ssmbench(["eval", str(checkpoint), "--n-examples", "16", "--no-checks", "--leaderboard",
                           str(tmp_path / "results.parquet")], tmp_path, site)
    assert evaluated.returncode == 0, evaluated.stderr
    planned = _ssmbench(["study", "--dataset", "digits", "--models", "lru,s4d", "--at", "st", "--epochs", "1",
                         "--out", str(tmp_path / "study"), "--dry-run"], tmp_path, site)
    assert planned.returncode == 0 and "lru-st-none" in planned.stdout, planned.stderr + planned.stdout
    missing = _ssmbench(["zoo", "show", str(checkpoint)], tmp_path, None)
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1, missing.stderr
    assert "mixer plugin ssmbench-lru" in missing.stderr and "pip install ssmbench-lru" in missing.stderr
    unknown = _ssmbench(["train", "lru", "--epochs", "1"], tmp_path, None)
    assert unknown.returncode == 2 and "unknown architecture 'lru'" in unknown.stderr


def test_the_lru_mixer_equals_its_recurrence_step_by_step(site, monkeypatch: pytest.MonkeyPatch) -> None:
    """In this process: the entry point loads the mixer by name; its FFT form equals the recurrence."""
    import model_zoo

    monkeypatch.syspath_prepend(str(site))
    # The registry refuses removals; a copy of its table takes the plugin and is dropped afterwards.
    monkeypatch.setattr(MIXERS, "_entries", dict(MIXERS._entries))
    monkeypatch.delitem(sys.modules, "ssmbench_lru", raising=False)
    try:
        torch.manual_seed(0)
        model = model_zoo.build_model("lru", "digits", d_model=6, d_state=5, n_layers=1)
        mixer = model.blocks[0].mixer
        x = torch.randn(2, 17, 6, dtype=torch.float64)
        mixer.double()
        lam = torch.exp(mixer.log_lambda())
        b = torch.view_as_complex(mixer.b) * torch.exp(mixer.gamma_log)[:, None]
        c = torch.view_as_complex(mixer.c)
        h = torch.zeros(2, 5, dtype=lam.dtype)
        expected = []
        for t in range(x.shape[1]):
            h = lam * h + x[:, t].to(b.dtype) @ b.T
            expected.append((h @ c.T).real + mixer.d * x[:, t])
        assert torch.allclose(mixer.core(x), torch.stack(expected, dim=1), atol=1e-10)
        assert bool((lam.abs() < 1).all())
    finally:  # the other tests see the built-in mixers only
        sys.modules.pop("ssmbench_lru", None)
