"""Leaderboard rows from evaluations: the one mapping (checkpoint, EvalResult) -> ResultRow.

`ssmbench eval` and `ssmbench study` both record results; the leaderboard only stays comparable
if every writer fills every field (train eps of standard training, versions, device) the same way.
"""

from __future__ import annotations

import torch

from model_zoo.checkpoints import CheckpointMeta
from ssmbench import __version__
from ssmbench.evaluate import EvalResult
from ssmbench.leaderboard import ResultRow, utc_now


def result_row(run_id: str, model: str, meta: CheckpointMeta, result: EvalResult, sha256: str) -> ResultRow:
    """The row for `result`, measured on the checkpoint described by `meta` with file hash `sha256`.

    `model` is the name as the user gave it (a path or a zoo name); it is recorded verbatim.
    """
    config = meta.config
    method = str(meta.training.get("method", ""))
    return ResultRow(
        run_id=run_id,
        time=utc_now(),
        model=model,
        dataset=config.dataset,
        arch=config.arch,
        ads=config.ads,
        attention=config.attention,
        method=method,
        train_eps=0.0 if method == "st" else float(meta.training.get("eps", 0.0)),  # standard training has no eps
        checkpoint_kind=meta.kind,
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
    )
