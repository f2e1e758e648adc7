"""evaluate(): the first N examples, batching, progress, AutoAttack backends, exact resume."""

from __future__ import annotations

import json

import pytest
import torch

import ssmbench
from model_zoo.errors import UsageError
from ssmbench.attacks import predict
from ssmbench.evaluate import default_device, evaluate

EPS = 8 / 255
AA_EXAMPLES, AA_BATCH = 16, 8  # AutoAttack costs ~7-13 s per batch here, mostly Square's 5000 queries


@pytest.fixture(scope="module")
def autoattack_official(model, test_set):
    return evaluate(model, *test_set, "autoattack", EPS, AA_EXAMPLES, AA_BATCH, backend="official", checks=None)


def test_pgd10_on_the_first_n_examples_in_fixed_order(model, test_set) -> None:
    x, y = test_set
    full = evaluate(model, x, y, "pgd10", EPS, batch_size=50, checks=None)
    first = evaluate(model, x, y, "pgd10", EPS, n_examples=100, batch_size=50, checks=None)
    assert full.n_examples == len(x) and first.n_examples == 100
    assert torch.equal(full.clean, predict(model, x) == y)
    assert torch.equal(first.clean, full.clean[:100]) and torch.equal(first.robust, full.robust[:100])
    assert full.robust_acc == full.per_attack["pgd10"] < full.clean_acc
    assert (full.suite, full.backend, full.backend_version) == ("pgd10", "ssmbench", ssmbench.__version__)
    assert full.device == str(default_device()) and full.wall_seconds > 0


def test_progress_reports_examples_done_and_the_running_attack(model, test_set) -> None:
    calls: list[tuple[int, int, str]] = []
    evaluate(model, *test_set, "pgd10", EPS, n_examples=100, batch_size=40, checks=None, progress=lambda *a: calls.append(a))
    assert calls == [(0, 100, ""), (0, 100, "pgd10"), (40, 100, ""), (40, 100, "pgd10"), (80, 100, ""), (80, 100, "pgd10"), (100, 100, "")]


def test_the_model_mode_is_restored(model, test_set) -> None:
    model.train()
    try:
        evaluate(model, *test_set, "pgd10", EPS, n_examples=20, checks=None)
        assert model.training
    finally:
        model.eval()


def test_autoattack_is_at_most_pgd10_which_is_at_most_clean(model, test_set, autoattack_official) -> None:
    aa = autoattack_official
    pgd = evaluate(model, *test_set, "pgd10", EPS, AA_EXAMPLES, AA_BATCH, checks=None)
    assert list(aa.per_attack) == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert list(aa.per_attack.values()) == sorted(aa.per_attack.values(), reverse=True)
    assert torch.equal(aa.clean, pgd.clean)
    assert aa.robust_acc <= pgd.robust_acc <= pgd.clean_acc
    assert 0 < aa.robust_acc < aa.clean_acc  # the comparison is not between trivial numbers
    assert (aa.suite, aa.backend) == ("autoattack", "pyautoattack")


def test_the_two_autoattack_backends_agree(model, test_set, autoattack_official) -> None:
    # One batch: Square's 5000 queries cost the same per batch whatever its size.
    other = evaluate(model, *test_set, "autoattack", EPS, AA_EXAMPLES, AA_EXAMPLES, backend="torchattacks", checks=None)
    assert other.backend == "torchattacks" and torch.equal(other.clean, autoattack_official.clean)
    assert abs(other.robust_acc - autoattack_official.robust_acc) <= 0.02


class _Interrupt(Exception):
    pass


def test_a_resumed_autoattack_run_equals_an_uninterrupted_one(model, test_set, autoattack_official, tmp_path) -> None:
    state = tmp_path / "aa-state.json"

    def stop_after_first_batch(done: int, total: int, attack: str) -> None:
        if done == AA_BATCH and not attack:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        evaluate(model, *test_set, "autoattack", EPS, AA_EXAMPLES, AA_BATCH, checks=None, state_path=state, progress=stop_after_first_batch)
    assert len(json.loads(state.read_text())["batches"]) == 1
    calls: list[tuple[int, int, str]] = []
    resumed = evaluate(model, *test_set, "autoattack", EPS, AA_EXAMPLES, AA_BATCH, checks=None, state_path=state, progress=lambda *a: calls.append(a))
    assert calls[0] == (AA_BATCH, AA_EXAMPLES, "")  # the finished batch was not attacked again
    assert all(done >= AA_BATCH for done, _, _ in calls)
    assert torch.equal(resumed.clean, autoattack_official.clean)
    for name, flags in autoattack_official.robust_after.items():
        assert torch.equal(resumed.robust_after[name], flags), name
    assert not state.exists()  # a finished run leaves no state behind


def test_a_state_file_of_another_evaluation_is_refused(model, test_set, tmp_path) -> None:
    state = tmp_path / "state.json"

    def stop(done: int, total: int, attack: str) -> None:
        if done == 20 and not attack:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        evaluate(model, *test_set, "pgd10", EPS, 40, 20, checks=None, state_path=state, progress=stop)
    with pytest.raises(UsageError, match="another evaluation"):
        evaluate(model, *test_set, "pgd10", 4 / 255, 40, 20, checks=None, state_path=state)


@pytest.mark.parametrize(
    "kwargs",
    [{"n_examples": 0}, {"n_examples": 361}, {"batch_size": 0}, {"suite": "pgd7"}, {"backend": "cleverhans"}, {"eps": -0.1}],
)
def test_bad_arguments_are_usage_errors(model, test_set, kwargs) -> None:
    arguments = {"suite": "pgd10", "eps": EPS, **kwargs}
    with pytest.raises(UsageError):
        evaluate(model, *test_set, checks=None, **arguments)
