"""Bring your own model: `ssmbench eval module:callable`, `ssmbench.benchmark` and the contract checks.

The reference is the zoo path: the same weights saved as a checkpoint and evaluated by `ssmbench
eval CHECKPOINT` must give the same accuracies and the same per-example outcomes.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

import ssmbench
from model_zoo import build_model, checkpoints
from ssmbench.byom import ContractError, check_contract, is_callable_spec, weights_sha256
from ssmbench.cli import main
from ssmbench.data import load_split
from ssmbench.leaderboard import read

MODELS = '''
import torch
from torch import nn
import model_zoo


def build(d_model=16, seed=0):
    torch.manual_seed(seed)
    return model_zoo.build_model("s4d", "digits", d_model=d_model, d_state=8, n_layers=1)


def like(zoo_name):
    """A fresh model of a shipped checkpoint's architecture, given that checkpoint's weights."""
    import ssmbench
    from model_zoo.registry import build_from_config

    shipped, meta = ssmbench.load_with_meta(zoo_name)
    model = build_from_config(meta.config)  # in train mode, as built
    model.load_state_dict(shipped.state_dict())
    return model


def wide():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 11))


def not_a_model():
    return 3
'''
N = "24"


@pytest.fixture()
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A module of the user's, importable as `usermodels` (a fresh name per test: no stale import)."""
    name = f"usermodels_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(MODELS))
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def _same_measurement(a, b) -> None:
    assert (a.clean_acc, a.robust_acc, a.per_attack, a.n_examples) == (b.clean_acc, b.robust_acc, b.per_attack, b.n_examples)
    assert a.outcomes == b.outcomes and a.outcome_attacks == b.outcome_attacks and a.labels_sha256 == b.labels_sha256


def test_callable_target_and_benchmark_give_the_rows_of_the_zoo_model_built_the_same_way(user_module, tmp_path, capsys) -> None:
    results, zoo_name = tmp_path / "results.parquet", "s4-st-none-digits"
    spec = f"{user_module}:like"
    assert main(["eval", spec, "--dataset", "digits", "--model-kwargs", f'{{"zoo_name": "{zoo_name}"}}', "--n-examples", N,
                 "--no-checks", "--leaderboard", str(results)]) == 0, capsys.readouterr().err
    assert main(["eval", zoo_name, "--n-examples", N, "--no-checks", "--leaderboard", str(results)]) == 0
    benchmarked = ssmbench.benchmark(ssmbench.load(zoo_name), dataset="digits", suite="pgd10", n_examples=int(N),
                                     checks=None, name="mine", leaderboard=results)
    by_callable, by_zoo, by_benchmark = read(results)
    for row in (by_callable, by_benchmark):
        _same_measurement(row, by_zoo)
    assert by_zoo.robust_acc < by_zoo.clean_acc < 1  # outcomes differ between examples and attacks: equality means something
    tensors = checkpoints.read_meta(ssmbench.loading.resolve_target(zoo_name))[1]["tensors_sha256"]
    assert by_callable.checkpoint_sha256 == by_benchmark.checkpoint_sha256 == tensors == weights_sha256(ssmbench.load(zoo_name))
    assert (by_callable.model, by_callable.arch, by_callable.dataset) == (spec, spec + f'{{"zoo_name": "{zoo_name}"}}', "digits")
    assert (by_benchmark.model, by_benchmark.arch) == ("mine", "mine") and benchmarked == by_benchmark
    assert by_callable.flags == by_benchmark.flags == ()  # eval puts a fresh module in eval mode; load() returns eval mode
    assert weights_sha256(ssmbench.load("s4-pgd-none-digits")) != tensors


def test_a_robustbench_checkpoint_is_evaluated_like_the_weights_it_holds(user_module, tmp_path, capsys) -> None:
    torch.manual_seed(5)  # not the callable's seed: the weights must come from the file
    trained = build_model("s4d", "digits", d_model=16, d_state=8, n_layers=1)
    checkpoint = tmp_path / "trained.safetensors"
    checkpoints.save(trained, checkpoint, checkpoints.CheckpointMeta(config=trained.config))
    robustbench = tmp_path / "robustbench.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in trained.state_dict().items()}, "epoch": 3}, robustbench)
    results = tmp_path / "results.parquet"
    for target in ([str(checkpoint)], [f"{user_module}:build", "--dataset", "digits", "--weights", str(robustbench)]):
        assert main(["eval", *target, "--n-examples", N, "--no-checks", "--leaderboard", str(results)]) == 0, capsys.readouterr().err
    by_checkpoint, by_weights = read(results)
    _same_measurement(by_weights, by_checkpoint)
    assert by_weights.checkpoint_sha256 == weights_sha256(trained)
    torch.save({"state_dict": build_model("s4d", "digits", d_model=8, d_state=8, n_layers=1).state_dict()}, robustbench)
    capsys.readouterr()
    assert main(["eval", f"{user_module}:build", "--dataset", "digits", "--weights", str(robustbench), "--no-leaderboard"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "robustbench.pt" in err and "size mismatch" in err


@pytest.mark.parametrize(("args", "message"), [
    (["{m}:build"], "needs --dataset"),
    (["{m}:wide", "--dataset", "digits"], "returned shape (128, 11) for 128 images; expected logits (128, 10)"),
    (["{m}:not_a_model", "--dataset", "digits"], "returned int, not a torch.nn.Module"),
    (["{m}:build", "--dataset", "digits", "--model-kwargs", "[1]"], "must be a JSON object"),
    (["{m}:build", "--dataset", "digits", "--model-kwargs", '{"depth": 3}'], "unexpected keyword argument 'depth'"),
    (["{m}:missing", "--dataset", "digits"], "has no attribute missing"),
    (["nosuchpackage_xyz:build", "--dataset", "digits"], "cannot import nosuchpackage_xyz"),
])
def test_bad_callable_targets_are_one_line_errors(user_module, args, message, capsys) -> None:
    argv = ["eval", *(a.replace("{m}", user_module) for a in args), "--n-examples", N, "--no-checks", "--no-leaderboard"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err


def test_checkpoint_targets_refuse_the_callable_only_options(capsys) -> None:
    assert main(["eval", "s4-st-none-digits", "--dataset", "mnist", "--no-leaderboard"]) == 2
    assert "--dataset only apply to a module:callable target" in capsys.readouterr().err
    assert is_callable_spec("pkg.models:build") and not is_callable_spec("runs/s4") and not is_callable_spec("s4-st-none-digits")


class _Scaled(nn.Module):
    """A trained model whose normalization was left outside: it expects `scale(x)` for images x in [0, 1]."""

    def __init__(self, inner: nn.Module, unscale) -> None:
        super().__init__()
        self.inner, self.unscale = inner, unscale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(self.unscale(x))


class _Noisy(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x) + 0.1 * torch.randn(len(x), 10)


class _LogInput(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(torch.log(x))


@pytest.fixture(scope="module")
def trained() -> nn.Module:
    return ssmbench.load("s4-st-none-digits")  # shipped: 90%+ clean, so a wrong input scale shows


@pytest.fixture(scope="module")
def test_images() -> tuple[torch.Tensor, torch.Tensor]:
    return load_split("digits", "test")


def test_a_model_that_honours_the_contract_passes_trained_or_not(trained, test_images) -> None:
    x, y = test_images
    assert check_contract(trained, x, y, 10) == ()
    fresh = build_model("s4d", "digits", d_model=16, d_state=8, n_layers=1).eval()  # at chance on every scale
    assert check_contract(fresh, x, y, 10) == ()
    assert not fresh.training


@pytest.mark.parametrize(("unscale", "convention"), [
    (lambda z: z / 255, "[0, 255]"),  # trained on x, used as model(255 x)
    (lambda z: (z + 1) / 2, "[-1, 1]"),
])
def test_a_model_expecting_inputs_outside_the_unit_box_is_refused(trained, test_images, unscale, convention) -> None:
    x, y = test_images
    with pytest.raises(ContractError, match=r"expects inputs outside \[0, 1\].*scaled to " + convention.replace("[", r"\[").replace("]", r"\]")):
        check_contract(_Scaled(trained, unscale), x, y, 10)
    assert check_contract(_Scaled(trained, unscale).eval(), x, y, 10, box=False) == ()  # data in raw units: no box to hold it to


def test_non_finite_outputs_are_refused_and_train_mode_and_randomness_flagged(trained, test_images) -> None:
    x, y = test_images
    with pytest.raises(ContractError, match="non-finite logits"):
        check_contract(_LogInput(trained), x, y, 10)  # log(0) on dark pixels
    trained.train()
    try:
        assert check_contract(trained, x, y, 10) == ("returned-in-train-mode",)
        assert trained.training  # the caller's mode is restored
    finally:
        trained.eval()
    assert check_contract(_Noisy(trained).eval(), x, y, 10) == ("random-forward",)


def test_benchmark_records_contract_flags_and_refuses_before_computing(trained, tmp_path) -> None:
    results = tmp_path / "results.parquet"
    row = ssmbench.benchmark(_Noisy(trained), dataset="digits", n_examples=16, checks=None, leaderboard=results)
    assert set(row.flags) == {"random-forward", "returned-in-train-mode"}  # a fresh module is in train mode
    assert read(results) == [row] and row.arch == "_Noisy"
    with pytest.raises(ContractError):
        ssmbench.benchmark(_Scaled(trained, lambda z: z / 255), dataset="digits", n_examples=16, leaderboard=results)
    assert len(read(results)) == 1  # nothing recorded for the refused model


def _readme_block(kind: str) -> str:
    """The code block that follows `<!-- byom-example: KIND -->` in README.md, verbatim."""
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    after = text.split(f"<!-- byom-example: {kind} -->\n```{kind}\n", 1)[1]
    return after.split("\n```\n", 1)[0] + "\n"


def test_the_readmes_bring_your_own_model_example_runs_verbatim(tmp_path) -> None:
    import os
    import subprocess
    import sys

    (tmp_path / "mymodel.py").write_text(_readme_block("python"))
    root = Path(__file__).resolve().parents[1]
    # `python` and `ssmbench` are this interpreter and this checkout, whatever is on PATH.
    script = 'python() { "$PYTHON" "$@"; }\nssmbench() { "$PYTHON" -m ssmbench "$@"; }\nset -e\n' + _readme_block("bash")
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(root)]),
           "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "TinyCNN: clean" in done.stdout and "flags: none" in done.stdout
    by_benchmark, by_callable = read(tmp_path / "my-results.parquet")
    _same_measurement(by_callable, by_benchmark)
    assert by_benchmark.checkpoint_sha256 == by_callable.checkpoint_sha256
    assert by_benchmark.flags == by_callable.flags == () and by_benchmark.checks_run and by_callable.checks_run
    assert (by_benchmark.arch, by_callable.arch, by_callable.n_examples) == ("TinyCNN", 'mymodel:build{"width": 16}', 128)
