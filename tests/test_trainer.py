"""The trainer: PGD-AT beats standard training under attack, files and metadata, exact resume
(also after a kill between any two writes), held-out selection that never sees the test images,
divergence stops with the last good checkpoints intact."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from model_zoo import build_model, files
from model_zoo.checkpoints import load, read_meta
from model_zoo.errors import RunError, UsageError
from model_zoo.training import EpochRecord, TrainConfig, TrainObserver, read_history, seed_everything, train, trainer
from model_zoo.training.trainer import hold_out, indices_sha256
from ssmbench.data import augment, load_split

Data = tuple[torch.Tensor, torch.Tensor]


@pytest.fixture(scope="module")
def digits() -> tuple[Data, Data]:
    return load_split("digits", "train"), load_split("digits", "test")


def tiny_model(seed: int = 0, d_model: int = 16, d_state: int = 8) -> torch.nn.Module:
    seed_everything(seed)
    return build_model("s4d", "digits", d_model=d_model, d_state=d_state, n_layers=1)


def small(data: Data, n: int) -> Data:
    return data[0][:n], data[1][:n]


class StopAfter(TrainObserver):
    """Simulates a kill right after epoch `epoch` was written."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_epoch(self, record: EpochRecord, is_best: bool) -> None:
        if record.epoch == self.epoch:
            raise KeyboardInterrupt


@pytest.mark.slow
def test_pgd_at_is_more_robust_than_standard_training(digits: tuple[Data, Data], tmp_path: Path) -> None:
    """eps 0.08 on digits: ST ends near 6% PGD-10 accuracy, PGD-AT near 20% while still learning
    (clean accuracy well above chance). Seeds 0-2 gave margins of 0.14-0.22."""
    train_data, test_data = digits
    results = {}
    for method in ("st", "pgd"):
        config = TrainConfig.from_settings(method=method, epochs=8, batch_size=32, lr=1e-2, eps=0.08, alpha=0.02, steps=3,
                             eval_examples=200, seed=0)
        model = tiny_model(d_model=32, d_state=16)
        results[method] = train(model, train_data, test_data, config, tmp_path / method).last
    assert results["st"].test_clean_acc > 0.5
    assert results["pgd"].test_clean_acc > 0.3
    assert results["pgd"].test_adv_acc > results["st"].test_adv_acc + 0.08


def test_run_directory_files_and_metadata(digits: tuple[Data, Data], tmp_path: Path) -> None:
    train_data, test_data = digits
    config = TrainConfig.from_settings(method="pgd", epochs=3, batch_size=32, eps=0.1, alpha=0.03, steps=2, eval_examples=48,
                         train_examples=64, seed=3)
    result = train(tiny_model(), train_data, test_data, config, tmp_path)
    history = read_history(tmp_path / "history.parquet")
    assert [r.epoch for r in history] == [1, 2, 3] and history == result.history
    assert [r.lr for r in history] == pytest.approx([1e-3, 7.5e-4, 2.5e-4])  # cosine over 3 epochs
    best_epoch = max(history, key=lambda r: (r.test_adv_acc, -r.epoch)).epoch
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for kind, epoch in (("best", best_epoch), ("last", 3)):
        model, meta = load(tmp_path / f"{kind}.safetensors")
        record = history[epoch - 1]
        assert (meta.kind, meta.epoch, meta.seed) == (kind, epoch, 3)
        assert meta.training["method"] == "pgd" and meta.training["threat_model"] == "Linf"
        assert meta.training["eps"] == 0.1 and meta.training["epochs"] == 3 and meta.training["steps"] == 2
        assert meta.metrics["pgd10_acc"] == record.test_adv_acc and meta.metrics["clean_acc"] == record.test_clean_acc
        assert meta.metrics["eval_examples"] == 48
    last_model, _ = load(tmp_path / "last.safetensors")
    x_test = test_data[0][:48]
    with torch.no_grad():
        accuracy = (last_model(x_test).argmax(1) == test_data[1][:48]).float().mean().item()
    assert accuracy == pytest.approx(result.last.test_clean_acc)


@pytest.mark.parametrize("method", ["pgd", "freeat"])
def test_kill_and_resume_equals_an_uninterrupted_run(method: str, digits: tuple[Data, Data], tmp_path: Path) -> None:
    """pgd exercises the attack RNG, freeat its perturbation carried across batches and epochs;
    augmentation (not used on digits by default) exercises the augment RNG."""
    train_data, test_data = small(digits[0], 72), small(digits[1], 24)
    config = TrainConfig.from_settings(method=method, epochs=3, batch_size=32, eps=0.1, alpha=0.03, steps=2, freeat_m=2,
                         freeat_full_epochs=True, seed=5)
    whole = tiny_model(seed=5)
    reference = train(whole, train_data, test_data, config, tmp_path / "whole", augment=augment)

    with pytest.raises(KeyboardInterrupt):
        train(tiny_model(seed=5), train_data, test_data, config, tmp_path / "killed", augment=augment, observer=StopAfter(1))
    assert read_meta(tmp_path / "killed" / "last.safetensors")[0].epoch == 1
    resumed_model = tiny_model(seed=99)  # resume must not depend on the fresh model's weights
    resumed = train(resumed_model, train_data, test_data, config, tmp_path / "killed", augment=augment, resume=True)

    for name, tensor in whole.state_dict().items():
        assert torch.equal(tensor, resumed_model.state_dict()[name]), name
    timing = ("seconds", "samples_per_s")
    strip = lambda records: [{k: v for k, v in r.to_dict().items() if k not in timing} for r in records]  # noqa: E731
    assert strip(resumed.history) == strip(reference.history)


def test_resume_refuses_missing_state_changed_settings_and_overwrite(digits: tuple[Data, Data], tmp_path: Path) -> None:
    train_data, test_data = small(digits[0], 32), small(digits[1], 16)
    config = TrainConfig.from_settings(method="st", epochs=1, batch_size=32, seed=1)
    with pytest.raises(UsageError, match="no training state to resume"):
        train(tiny_model(), train_data, test_data, config, tmp_path, resume=True)
    train(tiny_model(), train_data, test_data, config, tmp_path)
    with pytest.raises(UsageError, match="already holds a training run"):
        train(tiny_model(), train_data, test_data, config, tmp_path)
    with pytest.raises(UsageError, match="these differ: epochs, lr"):
        train(tiny_model(), train_data, test_data, TrainConfig.from_settings(method="st", epochs=2, lr=0.1, batch_size=32, seed=1),
              tmp_path, resume=True)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoints(digits: tuple[Data, Data], tmp_path: Path) -> None:
    train_data, test_data = small(digits[0], 64), small(digits[1], 16)
    model = tiny_model()
    poisoned = {"on": False}
    model.head.register_forward_hook(lambda _m, _i, out: out * float("nan") if poisoned["on"] else out)

    class PoisonAfterFirstEpoch(TrainObserver):
        def on_epoch(self, record: EpochRecord, is_best: bool) -> None:
            poisoned["on"] = True

    config = TrainConfig.from_settings(method="pgd", epochs=3, batch_size=32, eps=0.1, alpha=0.03, steps=1)
    with pytest.raises(RunError, match=r"non-finite loss nan at epoch 2, batch 1/2; the checkpoints in .* are from epoch 1"):
        train(model, train_data, test_data, config, tmp_path, observer=PoisonAfterFirstEpoch())
    for kind in ("best", "last"):
        restored, meta = load(tmp_path / f"{kind}.safetensors")
        assert meta.epoch == 1
        assert all(torch.isfinite(p).all() for p in restored.parameters())
    assert len(read_history(tmp_path / "history.parquet")) == 1


def test_freeat_divides_epochs_by_m_unless_asked_not_to() -> None:
    assert TrainConfig.from_settings(method="freeat", epochs=10, freeat_m=4).effective_epochs == 3
    assert TrainConfig.from_settings(method="freeat", epochs=10, freeat_m=4, freeat_full_epochs=True).effective_epochs == 10
    assert TrainConfig.from_settings(method="pgd", epochs=10).effective_epochs == 10


@pytest.mark.parametrize(
    ("overrides", "message"),
    [({"eps": -0.1}, "eps must be >= 0"), ({"epochs": 0}, "epochs must be > 0"), ({"method": "fgsm"}, "unknown training method"),
     ({"eval_examples": 0}, "eval_examples must be > 0")],
)
def test_config_rejects_bad_values(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        TrainConfig.from_settings(**overrides)


def test_hold_out_is_the_seeded_permutations_head_and_its_hash_is_reproducible() -> None:
    indices = hold_out(1437, 144, seed=3)
    expected = torch.randperm(1437, generator=torch.Generator().manual_seed(3))[:144].sort().values
    assert torch.equal(indices, expected) and len(set(indices.tolist())) == 144
    assert indices_sha256(indices) == hashlib.sha256(",".join(map(str, expected.tolist())).encode()).hexdigest()
    assert not torch.equal(hold_out(1437, 144, seed=4), indices)
    with pytest.raises(UsageError, match="val_examples must be between 1 and 1436"):
        hold_out(1437, 1437, seed=0)


def test_val_selection_never_touches_test_images(digits: tuple[Data, Data], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Instrument the per-epoch evaluations and the training batches: the selection eval gets
    exactly the held-out training images, training never sees them, and the best epoch follows
    the val numbers even when the test numbers would choose another epoch."""
    train_data, test_data = small(digits[0], 96), small(digits[1], 24)
    config = TrainConfig.from_settings(method="pgd", epochs=3, batch_size=32, eps=0.1, alpha=0.03, steps=1, val_examples=16,
                         train_examples=48, seed=2)
    held = hold_out(96, 16, seed=2)
    calls: dict[str, list[torch.Tensor]] = {"val": [], "test": []}
    real_evaluate = trainer.evaluate_pgd10

    def spy(model, x, y, eps, alpha, batch_size, seed, split="test", norm="linf"):  # noqa: ANN001, ANN202
        calls[split].append(x.clone())
        numbers = real_evaluate(model, x, y, eps, alpha, batch_size, seed, split=split, norm=norm)
        epoch = len(calls[split])
        # Test numbers fall and val numbers rise with the epoch: test selection would pick epoch 1.
        numbers[f"{split}_adv_acc"] = epoch / 10 if split == "val" else 1 - epoch / 10
        return numbers

    trained_on: list[torch.Tensor] = []
    real_method = trainer.get_method("pgd")
    monkeypatch.setattr(trainer, "evaluate_pgd10", spy)
    monkeypatch.setattr(trainer, "get_method", lambda name: lambda model, x, y, ctx: (trained_on.append(x.clone()), real_method(model, x, y, ctx))[1])
    result = train(tiny_model(), train_data, test_data, config, tmp_path)

    assert len(calls["val"]) == len(calls["test"]) == 3
    for x in calls["val"]:
        assert torch.equal(x, train_data[0][held])
    for x in calls["test"]:
        assert torch.equal(x, test_data[0])
    rows_trained = torch.cat(trained_on).flatten(1)
    val_rows = train_data[0][held].flatten(1)
    assert not (rows_trained[:, None, :] == val_rows[None, :, :]).all(dim=2).any(), "a held-out image was trained on"
    assert len(rows_trained) == 3 * 48
    assert result.best.epoch == 3 and [r.val_adv_acc for r in result.history] == pytest.approx([0.1, 0.2, 0.3])
    meta = read_meta(tmp_path / "best.safetensors")[0]
    assert meta.epoch == 3
    assert meta.training["selection"] == "val" and meta.training["val_examples"] == 16
    assert meta.training["val_split_seed"] == 2 and meta.training["val_indices_sha256"] == indices_sha256(held)
    assert meta.metrics["val_pgd10_acc"] == pytest.approx(0.3)


@pytest.mark.parametrize(("select_by", "best_epoch", "selection"), [("accuracy", 1, "val"), ("loss", 2, "val-loss")])
def test_loss_selection_ranks_epochs_that_accuracy_ties(digits: tuple[Data, Data], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        select_by: str, best_epoch: int, selection: str) -> None:
    """On a small hold-out every epoch can score the same PGD-10 accuracy: accuracy selection then
    keeps the first epoch, loss selection the one with the lowest held-out PGD-10 cross-entropy."""
    train_data, test_data = small(digits[0], 64), small(digits[1], 16)
    config = TrainConfig.from_settings(method="pgd", epochs=3, batch_size=32, eps=0.1, alpha=0.03, steps=1, val_examples=8,
                                       select_by=select_by, seed=1)
    real_evaluate = trainer.evaluate_pgd10
    val_losses = iter([0.9, 0.3, 0.6])

    def spy(model, x, y, eps, alpha, batch_size, seed, split="test", norm="linf"):  # noqa: ANN001, ANN202
        numbers = real_evaluate(model, x, y, eps, alpha, batch_size, seed, split=split, norm=norm)
        if split == "val":
            numbers |= {"val_adv_acc": 0.5, "val_adv_loss": next(val_losses)}
        return numbers

    monkeypatch.setattr(trainer, "evaluate_pgd10", spy)
    result = train(tiny_model(), train_data, test_data, config, tmp_path)
    assert result.best.epoch == best_epoch
    meta = read_meta(tmp_path / "best.safetensors")[0]
    assert meta.epoch == best_epoch and meta.training["selection"] == selection
    assert meta.training.get("select_by", "accuracy") == select_by  # the default is not written: metadata as before
    with pytest.raises(UsageError, match="select_by must be one of accuracy, loss"):
        TrainConfig.from_settings(select_by="margin")


def test_test_selection_stays_the_default(digits: tuple[Data, Data], tmp_path: Path) -> None:
    train_data, test_data = small(digits[0], 32), small(digits[1], 16)
    result = train(tiny_model(), train_data, test_data, TrainConfig.from_settings(method="st", epochs=1, batch_size=32), tmp_path)
    meta = read_meta(tmp_path / "best.safetensors")[0]
    assert meta.training["selection"] == "test" and "val_indices_sha256" not in meta.training
    assert result.history[0].val_adv_acc is None


class _KillAfterWrites:
    """Counts completed file writes of a run (every write goes through atomic_write_bytes) and
    raises after the `kill_after`-th: a kill between that write and the next."""

    def __init__(self, kill_after: int | None) -> None:
        self.kill_after = kill_after
        self.names: list[str] = []

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        real = files.atomic_write_bytes

        def write(path: Path, data: bytes) -> None:
            real(path, data)
            self.names.append(Path(path).name)
            if len(self.names) == self.kill_after:
                raise KeyboardInterrupt

        monkeypatch.setattr(files, "atomic_write_bytes", write)


def test_a_kill_between_any_two_writes_resumes_to_the_same_weights(
    digits: tuple[Data, Data], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    train_data, test_data = small(digits[0], 64), small(digits[1], 16)
    config = TrainConfig.from_settings(method="pgd", epochs=2, batch_size=32, eps=0.1, alpha=0.03, steps=1, val_examples=8, seed=4)
    counter = _KillAfterWrites(None)
    with monkeypatch.context() as patch:
        counter.install(patch)
        whole = tiny_model(seed=4)
        train(whole, train_data, test_data, config, tmp_path / "whole")
    writes = counter.names
    assert writes[0] == "state.safetensors" and writes.count("state.safetensors") == 3  # epoch 0, 1, 2
    assert {"best.safetensors", "last.safetensors", "history.parquet", "curves.png"} <= set(writes)
    for kill_after in range(1, len(writes)):
        run_dir = tmp_path / f"killed-{kill_after}"
        with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
            _KillAfterWrites(kill_after).install(patch)
            train(tiny_model(seed=4), train_data, test_data, config, run_dir)
        resumed = tiny_model(seed=99)
        train(resumed, train_data, test_data, config, run_dir, resume=True)
        for name, tensor in whole.state_dict().items():
            assert torch.equal(tensor, resumed.state_dict()[name]), (kill_after, writes[kill_after - 1], name)
        for kind in ("best", "last"):
            assert read_meta(run_dir / f"{kind}.safetensors")[1]["tensors_sha256"] == \
                read_meta(tmp_path / "whole" / f"{kind}.safetensors")[1]["tensors_sha256"], (kill_after, kind)
