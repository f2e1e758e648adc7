"""The shipped zoo: every entry resolves, matches its sha256, loads and reproduces its clean
accuracy exactly; and `ssmbench zoo add` on a freshly trained tiny checkpoint."""

from __future__ import annotations

import tomllib
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from model_zoo import build_model, checkpoints, zoo
from model_zoo.errors import CheckpointError, UsageError
from ssmbench.cli import main
from ssmbench.data import load_split
from ssmbench.evaluate import EvalSettings, evaluate
from ssmbench.leaderboard import append, utc_now
from ssmbench.protocol import below_publication_standard
from ssmbench.records import result_row

ENTRIES = sorted(zoo.load_zoo().values(), key=lambda entry: entry.name)
METRICS = ("clean_acc", "pgd10_acc", "autoattack_acc", "n_examples")


def correct_count(model: torch.nn.Module, dataset: str, n: int) -> int:
    """Correct predictions on the first n test images, computed here without ssmbench.evaluate."""
    x, y = load_split(dataset, "test", download=False)
    with torch.no_grad():
        return int((model(x[:n]).argmax(1) == y[:n]).sum())


@pytest.mark.parametrize("entry", ENTRIES, ids=[entry.name for entry in ENTRIES])
def test_every_zoo_entry_resolves_loads_and_reproduces_its_clean_accuracy(entry: zoo.ZooEntry) -> None:
    if not entry.file and not zoo.local_path(entry).is_file():
        pytest.skip(f"{entry.name} is a download (ssmbench zoo fetch {entry.name})")
    path = zoo.resolve(entry.name)  # checks the file's sha256 against zoo.toml
    assert checkpoints.file_sha256(path) == entry.sha256
    model, meta = checkpoints.load(path)
    assert meta.config.to_dict() == entry.config
    assert set(METRICS) <= set(entry.metrics)
    n = int(entry.metrics["n_examples"])
    assert correct_count(model, meta.config.dataset, n) == round(entry.metrics["clean_acc"] * n)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model trained for a few epochs on digits: accurate enough that the numbers mean something."""
    torch.manual_seed(0)
    x, y = load_split("digits", "train")
    model = build_model("s4d", "digits", d_model=16, d_state=8, n_layers=1, ads="tanh")
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-2)
    for _ in range(8):
        for rows in torch.randperm(len(x)).split(32):
            optimizer.zero_grad()
            F.cross_entropy(model(x[rows]), y[rows]).backward()
            optimizer.step()
    path = tmp_path_factory.mktemp("run") / "best.safetensors"
    training = {"method": "pgd", "epochs": 8, "eps": 8 / 255, "lr": 2e-2, "train_examples": None}
    checkpoints.save(model.eval(), path, checkpoints.CheckpointMeta(model.config, training=training, epoch=8, kind="best"))
    return path


@pytest.fixture
def zoo_file(tmp_path: Path) -> Path:
    path = tmp_path / "zoo" / "zoo.toml"
    path.parent.mkdir()
    path.write_text("# Named checkpoints.\n# A comment that must survive.\n\n[models.kept]\nurl = \"https://example.org/k.safetensors\"\nsha256 = \"0000000000000000000000000000000000000000000000000000000000000000\"\n")
    return path


def test_zoo_add_measures_copies_and_records_a_checkpoint(trained: Path, zoo_file: Path) -> None:
    args = ["zoo", "add", str(trained), "--name", "tiny-s4d", "--aa-examples", "4", "--no-checks", "--zoo-file", str(zoo_file)]
    assert main(args) == 0
    text = zoo_file.read_text()
    assert text.startswith("# Named checkpoints.\n# A comment that must survive.\n") and "[models.kept]" in text
    entry = zoo.get_entry("tiny-s4d", zoo_file)
    assert zoo.get_entry("kept", zoo_file).url == "https://example.org/k.safetensors"
    path = zoo.resolve("tiny-s4d", zoo_file)
    assert path == zoo_file.parent / "weights" / "tiny-s4d.safetensors"
    assert path.read_bytes() == trained.read_bytes() and entry.sha256 == checkpoints.file_sha256(trained)
    model, meta = checkpoints.load(path)
    assert entry.config == meta.config.to_dict() and entry.config["ads"] == "tanh"
    assert entry.training == {"method": "pgd", "epochs": 8, "eps": 8 / 255, "lr": 2e-2, "checkpoint": "best", "epoch": 8}
    assert (entry.metrics["n_examples"], entry.metrics["autoattack_examples"]) == (360, 4)
    correct = correct_count(model, "digits", 360)
    assert correct > 180  # the model learned something, so a wrong subset or model would show
    assert round(entry.metrics["clean_acc"] * 360) == correct  # exactly the same number of images right
    x, y = load_split("digits", "test")
    assert entry.metrics["pgd10_acc"] == evaluate(model, (x, y), "pgd10", EvalSettings(eps=8 / 255, device="cpu", checks=None)).robust_acc


def test_a_tampered_zoo_file_is_refused(trained: Path, zoo_file: Path) -> None:
    zoo.add_entry(trained, "tiny", {"clean_acc": 0.5, "n_examples": 360}, zoo_file=zoo_file)
    weights = zoo_file.parent / "weights" / "tiny.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # one bit pattern in the last weight
    weights.write_bytes(bytes(data))
    with pytest.raises(UsageError, match="does not match zoo.toml"):
        zoo.resolve("tiny", zoo_file)
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        checkpoints.load(weights)


def test_zoo_add_refuses_a_tampered_source_a_taken_name_and_a_bad_name(trained: Path, zoo_file: Path, tmp_path: Path) -> None:
    tampered = tmp_path / "tampered.safetensors"
    data = bytearray(trained.read_bytes())
    data[-1] ^= 0xFF
    tampered.write_bytes(bytes(data))
    before = zoo_file.read_text()
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        zoo.add_entry(tampered, "t", {"clean_acc": 0.5}, zoo_file=zoo_file)
    with pytest.raises(UsageError, match="already has a model 'kept'"):
        zoo.add_entry(trained, "kept", {"clean_acc": 0.5}, zoo_file=zoo_file)
    with pytest.raises(UsageError, match="may only use letters"):
        zoo.add_entry(trained, "../escape", {"clean_acc": 0.5}, zoo_file=zoo_file)
    assert zoo_file.read_text() == before and not (zoo_file.parent / "weights").exists()


def test_zoo_add_takes_the_numbers_from_the_leaderboard_and_replaces_an_entry(trained: Path, zoo_file: Path, tmp_path: Path) -> None:
    model, meta = checkpoints.load(trained)
    x, y = load_split("digits", "test")
    results = tmp_path / "results.parquet"
    sha256 = checkpoints.file_sha256(trained)
    pgd = evaluate(model, (x, y), "pgd10", EvalSettings(eps=8 / 255, n_examples=100, device="cpu", checks=None))
    older = result_row("old", str(trained), meta, pgd, sha256)
    # Rows with made-up accuracies drop their per-example outcomes, which would contradict them.
    unpaired = {"outcomes": b"", "outcome_attacks": ()}
    append(results, [replace(older, time="2020-01-01T00:00:00+00:00", robust_acc=0.0, **unpaired)])  # superseded
    aa = result_row("aa", str(trained), meta, pgd, sha256)  # stands for an AutoAttack row of this file
    append(results, [result_row("new", str(trained), meta, pgd, sha256),
                     replace(aa, suite="autoattack", robust_acc=0.25, n_examples=50, time=utc_now(), **unpaired)])
    zoo.add_entry(trained, "tiny", {"clean_acc": 0.0}, zoo_file=zoo_file)
    args = ["zoo", "add", str(trained), "--name", "tiny", "--from-leaderboard", str(results), "--replace", "--zoo-file", str(zoo_file)]
    assert main(args) == 0
    metrics = zoo.get_entry("tiny", zoo_file).metrics
    assert metrics == {"clean_acc": pgd.clean_acc, "pgd10_acc": pgd.robust_acc, "autoattack_acc": 0.25,
                       "n_examples": 100, "autoattack_examples": 50, "eps": 8 / 255}
    models = tomllib.loads(zoo_file.read_text())["models"]
    assert sorted(models) == ["kept", "tiny"]
    other = tmp_path / "other.parquet"
    append(other, [result_row("x", "x", meta, pgd, "f" * 64)])
    assert main(["zoo", "add", str(trained), "--name", "t2", "--from-leaderboard", str(other), "--zoo-file", str(zoo_file)]) == 2


@pytest.mark.parametrize("entry", ENTRIES, ids=[entry.name for entry in ENTRIES])
def test_every_zoo_entry_meets_the_publication_standard(entry: zoo.ZooEntry) -> None:
    examples = entry.metrics.get("autoattack_examples", 0)
    assert below_publication_standard("autoattack", int(examples), entry.config["dataset"]) is None, entry.name
