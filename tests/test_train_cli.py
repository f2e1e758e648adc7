"""`ssmbench train` end to end on digits, resume through the CLI, and one-line errors (exit 2)."""

from __future__ import annotations

from pathlib import Path

import pytest

from model_zoo.checkpoints import read_meta
from model_zoo.training import read_history
from ssmbench.cli import main

QUICK = ["--epochs", "1", "--train-examples", "128", "--eval-examples", "16", "--batch-size", "64"]


def test_train_writes_the_run_and_zoo_show_reads_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert main(["train", "s4d", "--at", "pgd", "--ads", "tanh", "--eps", "8/255", "--seed", "7", *QUICK, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Diff (best - last)" in printed
    for name in ("best.safetensors", "last.safetensors", "history.parquet", "curves.png", "state.safetensors"):
        assert (out / name).is_file(), name
    history = read_history(out / "history.parquet")
    meta, _ = read_meta(out / "best.safetensors")
    assert len(history) == 1 and meta.metrics["pgd10_acc"] == history[0].test_adv_acc
    assert (meta.config.arch, meta.config.ads, meta.config.d_model, meta.config.n_layers) == ("s4d", "tanh", 128, 2)
    assert meta.training["eps"] == pytest.approx(8 / 255) and meta.training["train_examples"] == 128 and meta.seed == 7

    assert main(["zoo", "show", str(out / "best.safetensors")]) == 0
    shown = capsys.readouterr().out
    assert '"method": "pgd"' in shown and "s4d" in shown

    # Resuming a finished run trains nothing and reports the same numbers.
    assert main(["train", "s4d", "--at", "pgd", "--ads", "tanh", "--seed", "7", *QUICK, "--out", str(out), "--resume"]) == 0
    assert read_history(out / "history.parquet") == history


def test_val_examples_select_best_on_held_out_training_images(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert main(["train", "s4d", "--at", "st", *QUICK, "--val-examples", "32", "--out", str(out)]) == 0
    assert "val clean/PGD-10 acc % on 32 held-out training images (select best)" in capsys.readouterr().out
    meta = read_meta(out / "best.safetensors")[0]
    assert meta.training["selection"] == "val" and meta.training["val_examples"] == 32
    assert meta.metrics["val_pgd10_acc"] == read_history(out / "history.parquet")[0].val_adv_acc


def test_default_run_directory_names_the_setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["train", "s4d", "--at", "st", "--attention", *QUICK]) == 0
    assert read_meta(tmp_path / "runs" / "s4d-st-none-attn-digits" / "last.safetensors")[0].config.attention


def test_help_shows_an_example(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--help"]) == 0
    assert "Example: ssmbench train s4d --at pgd" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--eps", "-1"], "--eps must be >= 0"),
        (["--alpha", "two"], "--alpha must be a number or a fraction"),
        (["--at", "fgsm"], "--at must be one of st, pgd"),
        (["--ads", "relu6"], "unknown AdS option 'relu6'"),
        (["--dataset", "svhn"], "--dataset must be one of digits"),
        (["--epochs", "0"], "epochs must be > 0"),
        (["--device", "gpu0"], "--device must be auto, cpu, cuda"),
        (["--dataset", "mnist", "--no-download", "--data-dir", "{tmp}"], "mnist: missing train-images-idx3-ubyte.gz"),
        (["--resume", "--out", "{tmp}/none"], "no training state to resume"),
        (["--val-examples", "1437", "--out", "{tmp}/run"], "val_examples must be between 1 and 1436"),
        (["--val-examples", "-1"], "val_examples must be >= 0"),
        (["--mixer-options", "{bad"], "--mixer-options must be a JSON table"),
        (["--mixer-options", "[1]"], "--mixer-options must be a JSON table"),
        (["--mixer-options", '{"n_ssm": 1}'], "s4d has no mixer option(s) n_ssm"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    assert main(["train", "s4d", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err


def test_unknown_architecture_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "s9"]) == 2
    assert "unknown architecture 's9'" in capsys.readouterr().err
