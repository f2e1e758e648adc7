"""Transfer matrix: the white-box diagonal is each model's own PGD-10 result; the CLI's files."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

import ssmbench
from ssmbench.attacks import AttackSettings, build_suite, predict
from ssmbench.cli import main
from ssmbench.transfer import transfer_matrix

NAMES = ("s4-st-none-digits", "s4-pgd-none-digits", "mamba-pgd-none-digits")
N, BATCH = 96, 64  # two batches, the second one partial


@pytest.fixture(scope="module")
def matrix(test_set):
    images, labels = test_set
    models = [(name, ssmbench.load(name)) for name in NAMES]
    return models, transfer_matrix(models, images[:N], labels[:N], 8 / 255, seed=5, batch_size=BATCH)


def test_diagonal_is_each_models_own_pgd10_flags(matrix, test_set):
    """Flag for flag: the pgd10 suite on the same batches with the same seed."""
    models, result = matrix
    images, labels = test_set[0][:N], test_set[1][:N]
    suite = build_suite("pgd10", AttackSettings(eps=8 / 255, seed=5))
    for i, (name, model) in enumerate(models):
        own = torch.cat([suite.run(model, images[b:b + BATCH], labels[b:b + BATCH]).robust for b in range(0, N, BATCH)])
        assert torch.equal(result.robust[i, i], own), name


def test_off_diagonal_is_target_on_source_points(matrix, test_set):
    """Robust off the diagonal means: the target is right on the clean image and on the source's
    adversarial one. On these models transfer is weaker than white box, and the PGD-AT model's
    points still fool the standard-trained one."""
    models, result = matrix
    images, labels = test_set
    for t, (_, target) in enumerate(models):
        clean = predict(target, images[:N]) == labels[:N]
        assert torch.equal(result.clean[t], clean)
        for s in range(len(models)):
            assert not (result.robust[s, t] & ~clean).any()
    accuracy = result.robust.float().mean(dim=2)
    assert accuracy[0, 1] > accuracy[1, 1] and accuracy[0, 2] > accuracy[2, 2]  # transfer is weaker than white box here
    assert accuracy[1, 0] < result.clean[0].float().mean()  # the PGD-AT model's points do fool the ST model


def test_transfer_cli(tmp_path: Path, capsys):
    out = tmp_path / "transfer"
    assert main(["transfer", *NAMES[:2], "--n-examples", "20", "--out", str(out)]) == 0
    rows = pq.read_table(out / "transfer.parquet").to_pylist()
    assert [(r["source"], r["target"]) for r in rows] == [(a, b) for a in NAMES[:2] for b in NAMES[:2]]
    assert all(len(r["outcomes"]) == 20 and r["outcomes"].count("1") == r["robust"] for r in rows)
    assert (out / "transfer.png").read_bytes()[:4] == b"\x89PNG"
    assert "white box" in capsys.readouterr().out
    assert main(["transfer", NAMES[0], "--out", str(out)]) == 2
    assert main(["transfer", *NAMES[:2], "--eps", "-1", "--out", str(out)]) == 2
