"""Paired comparison of two leaderboard results: `ssmbench leaderboard compare A B`.

Two models can only be ranked when they were scored on the same examples with the same suite at
the same eps; then their per-example outcomes pair up and the exact McNemar test (ssmbench.stats)
says whether the difference is more than noise. Anything else is refused with the reason, since
an unpaired difference of two small-sample accuracies is exactly the reading this guards against.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from model_zoo.checkpoints import file_sha256
from model_zoo.errors import UsageError, ZooError
from ssmbench.leaderboard import ResultRow
from ssmbench.leaderboard_render import METHOD_NAMES, family
from ssmbench.loading import resolve_target
from ssmbench.stats import Paired, paired


class CompareError(UsageError):
    """Two results that cannot be compared, and why."""


def _label(row: ResultRow) -> str:
    return f"{family(row).label}, {METHOD_NAMES.get(row.method, row.method)}"


def describe(row: ResultRow) -> str:
    """'s4 + AdS (tanh), PGD-AT, best checkpoint, pgd10 (run ab12cd34ef56)'."""
    return f"{_label(row)}, {row.checkpoint_kind or 'other'} checkpoint, {row.suite} (run {row.run_id})"


def _checkpoint_sha256(name: str) -> str | None:
    """The sha256 of the checkpoint file or zoo entry `name` names, or None if it names none."""
    try:
        path = resolve_target(name)
    except (UsageError, ZooError, OSError):
        return None
    return file_sha256(path) if path.is_file() else None


def pick(rows: Sequence[ResultRow], name: str, suite: str, kind: str = "best", n_examples: int | None = None) -> ResultRow:
    """The newest row of `suite` for `name`: a model as recorded (zoo name or path), a run id, a
    checkpoint file or zoo name (matched by the file's sha256), or a label as the tables print
    it ('s4 + AdS (tanh)', or with the method: 's4 + AdS (tanh), PGD-AT').

    When several checkpoint kinds match, `kind` decides; several models or seeds are refused.
    `n_examples` keeps only results on that many examples (default: the newest result).
    """
    candidates = [r for r in rows if r.suite == suite and n_examples in (None, r.n_examples)]
    found = [r for r in candidates if name in (r.model, r.run_id)]
    if not found:
        sha256 = _checkpoint_sha256(name)
        found = [r for r in candidates if sha256 is not None and r.checkpoint_sha256 == sha256]
    if not found:
        found = [r for r in candidates if name in (family(r).label, _label(r))]
    if not found:
        on = "" if n_examples is None else f" on {n_examples} examples"
        raise CompareError(f"no {suite} result{on} for {name!r} in the results file; `ssmbench leaderboard show` lists them")
    if len({r.checkpoint_kind for r in found}) > 1:
        found = [r for r in found if r.checkpoint_kind == kind]
        if not found:
            raise CompareError(f"{name!r} has {suite} results, but none for the {kind} checkpoint; choose another --ckpt")
    models = sorted({(_label(r), r.train_seed, r.checkpoint_sha256) for r in found})
    if len(models) > 1:
        listed = "; ".join(f"{label} seed {seed} ({sha[:8]})" for label, seed, sha in models)
        raise CompareError(f"{name!r} matches {len(models)} models ({listed}); name one by its model path or run id")
    return max(found, key=lambda r: (r.timestamp, r.run_id))


@dataclass(frozen=True)
class Comparison:
    """A against B: robust and clean accuracy, paired on the same examples."""

    a: ResultRow
    b: ResultRow
    robust: Paired
    clean: Paired


def compare(a: ResultRow, b: ResultRow) -> Comparison:
    """Pair two rows' outcomes; refuses rows that are not measured alike or lack the outcomes."""
    for label, row in (("A", a), ("B", b)):
        if row.per_example is None:
            raise CompareError(
                f"{label} ({describe(row)}) has no per-example outcomes (recorded before results schema 2); "
                "re-evaluate it with `ssmbench eval` to compare it"
            )
    if a.example_set != b.example_set:
        raise CompareError(
            f"A and B were evaluated on different examples ({_examples(a)} vs {_examples(b)}); "
            "evaluate both with the same --n-examples on the same data"
        )
    if (a.threat_model, a.suite) != (b.threat_model, b.suite) or abs(a.eps - b.eps) > 1e-9:
        raise CompareError(
            f"A and B differ in the attack: {a.threat_model} {a.suite} at eps {a.eps:.6g} vs "
            f"{b.threat_model} {b.suite} at eps {b.eps:.6g}"
        )
    pa, pb = a.per_example, b.per_example
    assert pa is not None and pb is not None  # checked above; narrows the type
    return Comparison(a, b, paired(pa.robust, pb.robust), paired(pa.clean, pb.clean))


def _examples(row: ResultRow) -> str:
    return f"{row.dataset} {row.split} {row.examples or '?'}, labels {row.labels_sha256[:12] or 'not recorded'}"


def examples_text(row: ResultRow) -> str:
    """'360 digits test examples (first 360, labels 0123456789ab)': the label hash, shortened."""
    return f"{row.n_examples} {row.dataset} {row.split} examples ({row.examples}, labels {row.labels_sha256[:12]})"
