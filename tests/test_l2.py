"""The L2 threat model: PGD against torchattacks.PGDL2, AutoAttack L2 against the official code,
and the norm carried into results, the leaderboard row and the markdown."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
import torch
import torchattacks

import ssmbench
from model_zoo.training import perturb
from ssmbench.attacks import PGD, AttackSettings, build_suite, predict
from ssmbench.attacks.autoattack import AutoAttackPart
from ssmbench.cli import main
from ssmbench.evaluate import EvalSettings, evaluate

EPS = 0.5  # L2 radius on 8x8 digits in [0, 1]: PGD-10 takes the standard-trained S4 from 89% to 12% (360 images)


@pytest.fixture(scope="module")
def weak_model():
    return ssmbench.load("s4-st-none-digits")


def test_l2_projection_and_start_stay_in_the_ball():
    torch.manual_seed(0)
    x = torch.rand(64, 1, 8, 8)
    far = x + 3 * torch.randn_like(x)
    for eps in (0.1, 0.5, 2.0):
        for point in (perturb.project_l2(far, x, eps), perturb.l2_start(x, eps)):
            assert (point - x).flatten(1).norm(dim=1).max() <= eps * (1 + 1e-6)
            assert point.min() >= 0 and point.max() <= 1
    inside = x + 0.01 * torch.randn_like(x)
    torch.testing.assert_close(perturb.project_l2(inside.clamp(0, 1), x, 1.0), inside.clamp(0, 1))  # inside: unchanged


def test_l2_pgd_agrees_with_torchattacks_pgdl2(weak_model, test_set):
    """Same model, same 360 examples, the same algorithm (start, normalized steps of 2.5 eps / 10,
    rescaling projection): robust accuracy within 1 point, and every perturbation inside the ball."""
    images, labels = test_set
    ours = PGD(EPS, steps=10, norm="l2", seed=0)(weak_model, images, labels)
    torch.manual_seed(0)
    reference = torchattacks.PGDL2(weak_model, eps=EPS, alpha=2.5 * EPS / 10, steps=10, random_start=True)(images, labels)
    clean = predict(weak_model, images) == labels
    ours_acc = (clean & ~ours.success).float().mean().item()
    reference_acc = (clean & (predict(weak_model, reference) == labels)).float().mean().item()
    assert abs(ours_acc - reference_acc) <= 0.01, (ours_acc, reference_acc)
    assert ours_acc < clean.float().mean().item() - 0.15  # the attack bites at this radius
    assert (ours.x_adv - images).flatten(1).norm(dim=1).max() <= EPS * (1 + 1e-5)
    linf = PGD(EPS, steps=10, seed=0)(weak_model, images, labels)  # the Linf ball of the same radius is far larger
    assert (linf.x_adv - images).flatten(1).norm(dim=1).max() > 2 * EPS


def test_autoattack_l2_matches_the_official_code(weak_model, test_set):
    """APGD-CE L2 through our suite's part equals the official AutoAttack(norm='L2') run directly
    (same seed, same examples), and every returned point is inside the L2 ball; the torchattacks
    backend's L2 part also stays inside it and lands within a few examples of the official one."""
    from pyautoattack import AutoAttack

    images, labels = test_set[0][:48], test_set[1][:48]
    settings = AttackSettings(eps=EPS, seed=0, norm="l2")
    ours = AutoAttackPart("apgd-ce", settings)(weak_model, images, labels)
    runner = AutoAttack(weak_model, norm="L2", eps=EPS, seed=0, version="standard", device="cpu")
    runner.attacks_to_run = ["apgd-ce"]
    official, _ = runner.run_standard_evaluation(images, labels, batch_size=len(images))
    assert torch.equal(ours.success, predict(weak_model, official) != labels)
    assert (ours.x_adv - images).flatten(1).norm(dim=1).max() <= EPS * (1 + 1e-5)
    other = AutoAttackPart("apgd-ce", AttackSettings(eps=EPS, seed=0, norm="l2", backend="torchattacks"))(weak_model, images, labels)
    assert (other.x_adv - images).flatten(1).norm(dim=1).max() <= EPS * (1 + 1e-5)
    assert abs(int(other.success.sum()) - int(ours.success.sum())) <= 3
    pgd = build_suite("pgd10", settings).run(weak_model, images, labels)
    assert int(ours.success.sum()) >= int((pgd.clean & ~pgd.robust).sum()) - 2  # APGD-100 is at least as strong as PGD-10


def test_evaluate_records_the_norm_and_the_markdown_splits_by_it(weak_model, test_set, tmp_path):
    result = evaluate(weak_model, test_set, "pgd10", EvalSettings(eps=EPS, n_examples=32, checks=None, norm="l2"))
    assert result.threat_model == "L2"
    board = tmp_path / "board.parquet"
    for norm, eps in (("l2", "0.5"), ("linf", "8/255")):
        assert main(["eval", "s4-st-none-digits", "--norm", norm, "--eps", eps, "--n-examples", "16", "--no-checks", "--leaderboard", str(board)]) == 0
    assert sorted(pq.read_table(board, columns=["threat_model"]).column(0).to_pylist()) == ["L2", "Linf"]
    out = tmp_path / "board.md"
    assert main(["leaderboard", "publish", "--leaderboard", str(board), "--out", str(out)]) == 0
    text = out.read_text()
    assert "digits, L2, ε = 0.5" in text and "digits, Linf, ε = 8/255" in text
    assert main(["eval", "s4-st-none-digits", "--norm", "l3"]) == 2
    assert main(["eval", "s4-st-none-digits", "--norm", "linf", "--eps", "2"]) == 2
