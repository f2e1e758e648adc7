"""Records of evaluations: leaderboard rows, and the metrics that a zoo entry keeps.

`ssmbench eval` and `ssmbench study` both record results; the leaderboard only stays comparable
if every writer fills every field (train eps of standard training, versions, device) the same way.
`ssmbench zoo add` takes a checkpoint's numbers from a fresh evaluation or from its rows.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

import torch

from model_zoo.checkpoints import CheckpointMeta
from model_zoo.errors import UsageError
from model_zoo.registry import family_name
from ssmbench import __version__
from ssmbench.evaluate import EvalResult
from ssmbench.leaderboard import ResultRow, utc_now
from ssmbench.outcomes import PerExample, first_n


@dataclass(frozen=True)
class ModelLabels:
    """What a row says about the model measured, apart from the measurement itself.

    A checkpoint fills every field from its metadata; a model the user brings (`ssmbench.byom`)
    has only a name and a dataset, and the rest keeps the defaults ("" = not known).
    """

    dataset: str
    arch: str
    ads: str = "none"
    attention: bool = False
    method: str = ""
    train_eps: float = 0.0
    checkpoint_kind: str = ""
    train_seed: int = 0
    selection: str = "test"

    @classmethod
    def of_checkpoint(cls, meta: CheckpointMeta) -> ModelLabels:
        config = meta.config
        method = str(meta.training.get("method", ""))
        return cls(
            dataset=config.dataset,
            arch=family_name(config),  # 's4 (released)' and 's4' are different models, so different lines
            ads=config.ads,
            attention=config.attention,
            method=method,
            train_eps=0.0 if method == "st" else float(meta.training.get("eps", 0.0)),  # standard training has no eps
            checkpoint_kind=meta.kind,
            train_seed=meta.seed,
            # Checkpoints written before held-out selection existed chose best on the test set.
            selection=str(meta.training.get("selection", "test")),
        )


def result_row(
    run_id: str, model: str, meta: CheckpointMeta, result: EvalResult, sha256: str, split: str = "test"
) -> ResultRow:
    """The row for `result`, measured on the checkpoint described by `meta` with file hash `sha256`.

    `model` is the name as the user gave it (a path or a zoo name); it is recorded verbatim.
    """
    return labelled_row(run_id, model, ModelLabels.of_checkpoint(meta), result, sha256, split)


def labelled_row(
    run_id: str, model: str, labels: ModelLabels, result: EvalResult, sha256: str, split: str = "test"
) -> ResultRow:
    """The row for `result` on the model that `labels` describe; `sha256` identifies its weights.

    The row keeps the per-example outcomes and what identifies the examples (the first N of
    `split`, their label hash), and which checks ran on how many examples.
    """
    return ResultRow(
        run_id=run_id,
        time=utc_now(),
        model=model,
        dataset=labels.dataset,
        arch=labels.arch,
        ads=labels.ads,
        attention=labels.attention,
        method=labels.method,
        train_eps=labels.train_eps,
        checkpoint_kind=labels.checkpoint_kind,
        checkpoint_sha256=sha256,
        threat_model=result.threat_model,
        eps=result.eps,
        suite=result.suite,
        backend=result.backend,
        backend_version=result.backend_version,
        n_examples=result.n_examples,
        clean_acc=result.clean_acc,
        robust_acc=result.robust_acc,
        per_attack=result.per_attack,
        flags=result.flags,
        seed=result.seed,
        device=result.device,
        wall_seconds=result.wall_seconds,
        ssmbench_version=__version__,
        torch_version=torch.__version__,
        train_seed=labels.train_seed,
        selection=labels.selection,
        split=split,
        examples=first_n(result.n_examples),
        labels_sha256=result.labels_sha256,
        outcomes=PerExample.from_tensors(result.per_example.clean, result.per_example.robust_after).pack(),
        outcome_attacks=tuple(result.per_example.robust_after),
        checks_run=tuple(outcome.name for outcome in result.checks),
        check_examples=result.check_examples if result.checks else 0,
    )


class Measured(Protocol):
    """What an EvalResult and a ResultRow both say about one evaluation (read-only: a row is frozen,
    a result derives its accuracies)."""

    @property
    def clean_acc(self) -> float: ...

    @property
    def robust_acc(self) -> float: ...

    @property
    def n_examples(self) -> int: ...

    @property
    def eps(self) -> float: ...


def zoo_metrics(pgd10: Measured, autoattack: Measured) -> dict[str, float]:
    """The numbers a zoo entry records (`ssmbench zoo list` shows the first four).

    clean_acc and n_examples come from the PGD-10 evaluation, so the clean accuracy is the one on
    the PGD-10 examples (the whole test split when `zoo add` measures it).
    """
    if abs(pgd10.eps - autoattack.eps) > 1e-9:
        raise UsageError(f"the PGD-10 and AutoAttack results are at different eps ({pgd10.eps} and {autoattack.eps})")
    return {
        "clean_acc": float(pgd10.clean_acc),
        "pgd10_acc": float(pgd10.robust_acc),
        "autoattack_acc": float(autoattack.robust_acc),
        "n_examples": int(pgd10.n_examples),
        "autoattack_examples": int(autoattack.n_examples),
        "eps": float(pgd10.eps),
    }


def newest_rows(rows: Iterable[ResultRow], sha256: str, suites: tuple[str, ...]) -> dict[str, ResultRow]:
    """The newest row per suite recorded for the checkpoint file with this sha256.

    Matching by file hash, not by name, finds a checkpoint's results after it was copied or renamed.
    """
    found: dict[str, ResultRow] = {}
    for row in rows:
        if row.checkpoint_sha256 != sha256 or row.suite not in suites:
            continue
        kept = found.get(row.suite)
        if kept is None or (row.timestamp, row.run_id) > (kept.timestamp, kept.run_id):
            found[row.suite] = row
    missing = [suite for suite in suites if suite not in found]
    if missing:
        raise UsageError(f"no {', '.join(missing)} result recorded for the checkpoint with sha256 {sha256[:12]}...")
    return found
