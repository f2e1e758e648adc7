"""evaluate(): the first N examples, batching, progress, AutoAttack backends, exact resume."""

from __future__ import annotations

import json

import pytest
import torch

import ssmbench
from model_zoo.checkpoints import CheckpointMeta
from model_zoo.devices import resolve_device
from model_zoo.errors import UsageError
from ssmbench.attacks import AttackSettings, build_suite, eval_mode, predict
from ssmbench.checks import CheckConfig, run_checks
from ssmbench.evaluate import EvalSettings, evaluate
from ssmbench.outcomes import PerExample, labels_sha256
from ssmbench.records import result_row

EPS = 8 / 255
AA_EXAMPLES, AA_BATCH = 16, 8  # AutoAttack costs ~7-13 s per batch here, mostly Square's 5000 queries


@pytest.fixture(scope="module")
def autoattack_official(model, test_set):
    return evaluate(model, test_set, "autoattack", EvalSettings(eps=EPS, n_examples=AA_EXAMPLES, batch_size=AA_BATCH, backend="official", checks=None))


def test_pgd10_on_the_first_n_examples_in_fixed_order(model, test_set) -> None:
    x, y = test_set
    full = evaluate(model, (x, y), "pgd10", EvalSettings(eps=EPS, batch_size=50, checks=None))
    first = evaluate(model, (x, y), "pgd10", EvalSettings(eps=EPS, n_examples=100, batch_size=50, checks=None))
    assert full.n_examples == len(x) and first.n_examples == 100
    assert torch.equal(full.per_example.clean, predict(model, x) == y)
    assert torch.equal(first.per_example.clean, full.per_example.clean[:100])
    assert torch.equal(first.per_example.robust, full.per_example.robust[:100])
    assert full.robust_acc == full.per_attack["pgd10"] < full.clean_acc
    assert (full.suite, full.backend, full.backend_version) == ("pgd10", "ssmbench", ssmbench.__version__)
    assert full.device == str(resolve_device()) and full.wall_seconds > 0


def test_progress_reports_examples_done_and_the_running_attack(model, test_set) -> None:
    calls: list[tuple[int, int, str]] = []
    evaluate(model, test_set, "pgd10", EvalSettings(eps=EPS, n_examples=100, batch_size=40, checks=None), progress=lambda *a: calls.append(a))
    assert calls == [(0, 100, ""), (0, 100, "pgd10"), (40, 100, ""), (40, 100, "pgd10"), (80, 100, ""), (80, 100, "pgd10"), (100, 100, "")]


def test_the_model_mode_is_restored(model, test_set) -> None:
    model.train()
    try:
        evaluate(model, test_set, "pgd10", EvalSettings(eps=EPS, n_examples=20, checks=None))
        assert model.training
    finally:
        model.eval()


def test_autoattack_is_at_most_pgd10_which_is_at_most_clean(model, test_set, autoattack_official) -> None:
    aa = autoattack_official
    pgd = evaluate(model, test_set, "pgd10", EvalSettings(eps=EPS, n_examples=AA_EXAMPLES, batch_size=AA_BATCH, checks=None))
    assert list(aa.per_attack) == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert list(aa.per_attack.values()) == sorted(aa.per_attack.values(), reverse=True)
    assert torch.equal(aa.per_example.clean, pgd.per_example.clean)
    assert aa.robust_acc <= pgd.robust_acc <= pgd.clean_acc
    assert 0 < aa.robust_acc < aa.clean_acc  # the comparison is not between trivial numbers
    assert (aa.suite, aa.backend) == ("autoattack", "pyautoattack")


def test_the_two_autoattack_backends_agree(model, test_set, autoattack_official) -> None:
    # One batch: Square's 5000 queries cost the same per batch whatever its size.
    other = evaluate(model, test_set, "autoattack", EvalSettings(eps=EPS, n_examples=AA_EXAMPLES, batch_size=AA_EXAMPLES, backend="torchattacks", checks=None))
    assert other.backend == "torchattacks" and torch.equal(other.per_example.clean, autoattack_official.per_example.clean)
    assert abs(other.robust_acc - autoattack_official.robust_acc) <= 0.02


class _Interrupt(Exception):
    pass


def test_a_resumed_autoattack_run_equals_an_uninterrupted_one(model, test_set, autoattack_official, tmp_path) -> None:
    state = tmp_path / "aa-state.json"

    def stop_after_first_batch(done: int, total: int, attack: str) -> None:
        if done == AA_BATCH and not attack:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        evaluate(model, test_set, "autoattack", EvalSettings(eps=EPS, n_examples=AA_EXAMPLES, batch_size=AA_BATCH, checks=None, state_path=state), progress=stop_after_first_batch)
    assert len(json.loads(state.read_text())["batches"]) == 1
    calls: list[tuple[int, int, str]] = []
    resumed = evaluate(model, test_set, "autoattack", EvalSettings(eps=EPS, n_examples=AA_EXAMPLES, batch_size=AA_BATCH, checks=None, state_path=state), progress=lambda *a: calls.append(a))
    assert calls[0] == (AA_BATCH, AA_EXAMPLES, "")  # the finished batch was not attacked again
    assert all(done >= AA_BATCH for done, _, _ in calls)
    assert torch.equal(resumed.per_example.clean, autoattack_official.per_example.clean)
    for name, flags in autoattack_official.per_example.robust_after.items():
        assert torch.equal(resumed.per_example.robust_after[name], flags), name
    assert not state.exists()  # a finished run leaves no state behind


def test_a_state_file_of_another_evaluation_is_refused(model, test_set, tmp_path) -> None:
    state = tmp_path / "state.json"

    def stop(done: int, total: int, attack: str) -> None:
        if done == 20 and not attack:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        evaluate(model, test_set, "pgd10", EvalSettings(eps=EPS, n_examples=40, batch_size=20, checks=None, state_path=state), progress=stop)
    with pytest.raises(UsageError, match="another evaluation"):
        evaluate(model, test_set, "pgd10", EvalSettings(eps=4 / 255, n_examples=40, batch_size=20, checks=None, state_path=state))


@pytest.mark.parametrize(
    "kwargs",
    [{"n_examples": 0}, {"n_examples": 361}, {"batch_size": 0}, {"suite": "pgd7"}, {"backend": "cleverhans"}, {"eps": -0.1}],
)
def test_bad_arguments_are_usage_errors(model, test_set, kwargs) -> None:
    settings = {name: value for name, value in kwargs.items() if name != "suite"}
    with pytest.raises(UsageError):
        evaluate(model, test_set, kwargs.get("suite", "pgd10"), EvalSettings(checks=None, **settings))


def test_default_settings_record_the_row_of_the_suite_run_by_hand(model, test_set) -> None:
    """evaluate()'s defaults record what running pgd10 by hand gives: 256 examples a batch, all of
    the examples, seed 0, the default sanity checks on the first 128, the device that resolve_device picks."""
    x, y = test_set
    settings = AttackSettings(EPS)
    suite = build_suite("pgd10", settings)
    parts = [suite.run(model, x[start : start + 256], y[start : start + 256]) for start in range(0, len(x), 256)]
    clean = torch.cat([part.clean for part in parts])
    after = {"pgd10": torch.cat([part.robust_after["pgd10"] for part in parts])}
    with eval_mode(model):
        checks = run_checks(model, x[:128], y[:128], settings, CheckConfig(), suite.attacks, clean, after)
    meta = CheckpointMeta(config=model.config, training={"method": "st"}, kind="best")
    row = result_row("run", "model", meta, evaluate(model, (x, y), "pgd10", EvalSettings()), "0" * 64)
    expected = {
        "eps": EPS, "suite": "pgd10", "threat_model": "Linf", "backend": "ssmbench", "backend_version": ssmbench.__version__,
        "n_examples": len(x), "clean_acc": clean.float().mean().item(), "robust_acc": after["pgd10"].float().mean().item(),
        "per_attack": {"pgd10": after["pgd10"].float().mean().item()}, "seed": 0, "device": str(resolve_device()),
        "flags": tuple(dict.fromkeys(outcome.flag for outcome in checks if outcome.flag)),
        "checks_run": tuple(outcome.name for outcome in checks), "check_examples": 128,
        "examples": f"first {len(x)}", "labels_sha256": labels_sha256(y),
        "outcomes": PerExample.from_tensors(clean, after).pack(), "outcome_attacks": ("pgd10",),
    }
    assert 0 < row.robust_acc < row.clean_acc  # a model that PGD-10 neither leaves alone nor breaks completely
    assert {name: getattr(row, name) for name in expected} == expected
