"""`at_epoch`: one PGD-AT epoch on digits through `trainer.train`, against one standard-training epoch.

Both sides run the whole `train(...)` call for one epoch, the way `ssmbench train` runs it: the
training pass over the 1437 digits training images (batch 256, the default), the per-epoch clean
and PGD-10 evaluation on a small eval subset, and the checkpoint, history and curves writes. The
baseline is the same call with method 'st', so the ratio is the cost of adversarial training
(PGD-10 makes each batch about 11 forward+backward passes instead of one). The target is a PGD-AT
epoch under 10 s on the 2-core CPU this project is developed on; `epoch_train_s` is the training
pass alone (from the run's history).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from typing import Any

from benchmarks import Context, Row, Task, load_split_file, register_benchmark
from benchmarks.runner import Step
from model_zoo import build_model
from model_zoo.training import TrainConfig, seed_everything, train

ARCHS = ("s4d", "s4")
TARGET_S = 10.0
SEED = 0


@dataclass(frozen=True)
class EpochScale:
    eval_examples: int
    archs: tuple[str, ...]
    warmup: int
    repeats: int
    train_examples: int | None = None
    batch_size: int = 256
    model: dict[str, Any] = field(default_factory=dict)


SCALES = {
    "full": EpochScale(eval_examples=64, archs=ARCHS, warmup=0, repeats=3),
    "quick": EpochScale(eval_examples=32, archs=ARCHS, warmup=0, repeats=1),
    "tiny": EpochScale(eval_examples=4, archs=ARCHS[:1], warmup=0, repeats=1, train_examples=8, batch_size=4,
                       model={"n_layers": 1, "d_model": 8, "d_state": 4}),
}


def setup_epoch(
    device: str, arch: str, method: str, scratch: str, train_file: str, test_file: str, eval_examples: int,
    batch_size: int, train_examples: int | None, model: dict[str, Any],
) -> Step:
    """Each call builds a fresh model (same seed) and trains it for one epoch in a new run folder."""
    train_data, test_data = load_split_file(train_file), load_split_file(test_file)
    n_train = len(train_data[0][:train_examples])
    config = TrainConfig.from_settings(method=method, epochs=1, batch_size=batch_size, eval_examples=eval_examples,
                         train_examples=train_examples, seed=SEED)

    def step() -> dict[str, Any]:
        seed_everything(SEED)
        network = build_model(arch, "digits", **model).to(device)
        record = train(network, train_data, test_data, config, tempfile.mkdtemp(dir=scratch)).last
        return {"epoch_train_s": n_train / record.samples_per_s}

    return step


@register_benchmark("at_epoch")
def at_epoch_benchmark(ctx: Context) -> list[Row]:
    """One PGD-AT epoch on digits (trainer.train, digits preset) against one standard-training epoch."""
    scale = SCALES[ctx.scale]
    rows = []
    for arch in scale.archs:
        params = {"arch": arch, "scratch": str(ctx.scratch), "train_file": str(ctx.cached_split("digits", "train")),
                  "test_file": str(ctx.cached_split("digits", "test")), "eval_examples": scale.eval_examples,
                  "batch_size": scale.batch_size, "train_examples": scale.train_examples, "model": scale.model}
        ours = Task("PGD-AT epoch", setup_epoch, {**params, "method": "pgd"}, scale.warmup, scale.repeats)
        baseline = Task("standard-training epoch", setup_epoch, {**params, "method": "st"}, scale.warmup, scale.repeats)
        mine, theirs = ctx.compare(arch, ours, baseline)
        fields: dict[str, Any] = {}
        if mine.ok:
            fields = {"under_10s": mine.seconds < TARGET_S, "at_train_s": mine.info.get("epoch_train_s")}
        if theirs.ok:
            fields["st_train_s"] = theirs.info.get("epoch_train_s")
        case = f"{arch} digits, batch {scale.batch_size}, eval {scale.eval_examples}"
        rows.append(Row("at_epoch", case, mine, theirs, fields))
    return rows
