"""Paired comparison of two leaderboard results: `ssmbench leaderboard compare A B`.

Two models can only be ranked when they were scored on the same examples with the same suite at
the same eps; then their per-example outcomes pair up and the exact McNemar test (ssmbench.stats)
says whether the difference is more than noise. Anything else is refused with the reason, since
an unpaired difference of two small-sample accuracies is exactly the reading this guards against.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from scipy.stats import t as student_t

from model_zoo.checkpoints import file_sha256
from model_zoo.errors import UsageError, ZooError
from model_zoo.labels import method_label
from ssmbench.leaderboard import ResultRow
from ssmbench.leaderboard_render import family
from ssmbench.loading import resolve_target
from ssmbench.stats import CONFIDENCE, Paired, paired


class CompareError(UsageError):
    """Two results that cannot be compared, and why."""


def _label(row: ResultRow) -> str:
    return f"{family(row).label}, {method_label(row.method)}"


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


def pick(rows: Sequence[ResultRow], name: str, suite: str, kind: str = "best", n_examples: int | None = None,
         dataset: str | None = None) -> ResultRow:
    """The newest row of `suite` for `name`: a model as recorded (zoo name or path), a run id, a
    checkpoint file or zoo name (matched by the file's sha256), or a label as the tables print
    it ('s4 + AdS (tanh)', or with the method: 's4 + AdS (tanh), PGD-AT').

    When several checkpoint kinds match, `kind` decides; several models or seeds are refused.
    `n_examples` keeps only results on that many examples (default: the newest result); `dataset`
    only results on that data set (a label such as 's4, PGD-AT' names one model per data set).
    """
    return _one_model(_matching(rows, name, suite, kind, n_examples, dataset), name)


def _matching(rows: Sequence[ResultRow], name: str, suite: str, kind: str, n_examples: int | None,
              dataset: str | None) -> list[ResultRow]:
    """Every row of `suite` that `name` names (see `pick`), narrowed to the `kind` checkpoint when it matches several."""
    candidates = [r for r in rows if r.suite == suite and n_examples in (None, r.n_examples) and dataset in (None, r.dataset)]
    found = [r for r in candidates if name in (r.model, r.run_id)]
    if not found:
        sha256 = _checkpoint_sha256(name)
        found = [r for r in candidates if sha256 is not None and r.checkpoint_sha256 == sha256]
    if not found:
        found = [r for r in candidates if name in (family(r).label, _label(r))]
    if not found:
        on = ("" if n_examples is None else f" on {n_examples} examples") + ("" if dataset is None else f" on {dataset}")
        raise CompareError(f"no {suite} result{on} for {name!r} in the results file; `ssmbench leaderboard show` lists them")
    if len({r.checkpoint_kind for r in found}) > 1:
        found = [r for r in found if r.checkpoint_kind == kind]
        if not found:
            raise CompareError(f"{name!r} has {suite} results, but none for the {kind} checkpoint; choose another --ckpt")
    return found


def _one_model(found: list[ResultRow], name: str) -> ResultRow:
    """The newest of rows that must all be one model (one label, training seed and checkpoint)."""
    models = sorted({(_label(r), r.dataset, r.train_seed, r.checkpoint_sha256) for r in found})
    if len(models) > 1:
        listed = "; ".join(f"{label} on {dataset} seed {seed} ({sha[:8]})" for label, dataset, seed, sha in models)
        datasets = sorted({dataset for _, dataset, _, _ in models})
        advice = f"add --dataset ({' or '.join(datasets)})" if len(datasets) > 1 else "name one by its model path or run id"
        raise CompareError(f"{name!r} matches {len(models)} models ({listed}); {advice}")
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


def pick_seeds(rows: Sequence[ResultRow], name: str, suite: str, kind: str = "best", n_examples: int | None = None,
               dataset: str | None = None) -> dict[int, ResultRow]:
    """`pick` once per training seed: a label that names one model per seed (a multi-seed study's cell)."""
    found = _matching(rows, name, suite, kind, n_examples, dataset)
    seeds = sorted({r.train_seed for r in found})
    return {seed: _one_model([r for r in found if r.train_seed == seed], f"{name} (seed {seed})") for seed in seeds}


@dataclass(frozen=True)
class SeedComparison:
    """A against B seed by seed (each pair on the same examples), and the spread over seeds.

    The per-seed rows are the evidence: each is an exact paired test of two trained models. The
    seed-level summary treats the per-seed differences as a sample of training runs, so its t
    interval covers training randomness (with n - 1 degrees of freedom it is wide for 3 seeds, as
    it should be); it says nothing about examples beyond the test set. No pooled p-value is given:
    the seeds share their test examples, so their discordant pairs are not independent.
    """

    by_seed: dict[int, Comparison]

    @property
    def differences(self) -> list[float]:
        return [item.robust.difference for item in self.by_seed.values()]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.differences)

    def interval(self, confidence: float = CONFIDENCE) -> tuple[float, float] | None:
        """Student-t interval of the mean difference over seeds; None for a single seed."""
        values = self.differences
        if len(values) < 2:
            return None
        half = float(student_t.ppf((1 + confidence) / 2, len(values) - 1)) * statistics.stdev(values) / len(values) ** 0.5
        return self.mean - half, self.mean + half

    @property
    def significant_seeds(self) -> tuple[int, int]:
        """(seeds where A is significantly above B, seeds where it is significantly below)."""
        rows = [item.robust for item in self.by_seed.values() if item.robust.significant]
        return sum(r.difference > 0 for r in rows), sum(r.difference < 0 for r in rows)


def compare_seeds(a: dict[int, ResultRow], b: dict[int, ResultRow]) -> SeedComparison:
    """Pair A's and B's rows of each seed that both have; refuses when they share no seed."""
    shared = sorted(set(a) & set(b))
    if not shared:
        raise CompareError(f"A (seeds {sorted(a)}) and B (seeds {sorted(b)}) share no training seed; compare them without --seeds")
    return SeedComparison({seed: compare(a[seed], b[seed]) for seed in shared})


def _examples(row: ResultRow) -> str:
    return f"{row.dataset} {row.split} {row.examples or '?'}, labels {row.labels_sha256[:12] or 'not recorded'}"


def examples_text(row: ResultRow) -> str:
    """'360 digits test examples (first 360, labels 0123456789ab)': the label hash, shortened."""
    return f"{row.n_examples} {row.dataset} {row.split} examples ({row.examples}, labels {row.labels_sha256[:12]})"
