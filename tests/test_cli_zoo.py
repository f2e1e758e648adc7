"""`ssmbench zoo` and the CLI's error contract."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from model_zoo import build_model
from model_zoo.checkpoints import CheckpointMeta, save
from ssmbench.cli import main
from ssmbench.leaderboard_render import with_interval
from ssmbench.stats import wilson


def test_zoo_list_names_every_architecture(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["zoo", "list"]) == 0
    out = capsys.readouterr().out
    for name in ("s4", "s4d", "dss", "mega", "mamba", "s5"):
        assert f"│ {name} " in out
    assert "tanh" in out and "cifar10" in out


def test_zoo_list_shows_every_named_checkpoint_uncut_at_80_columns(capsys, monkeypatch) -> None:
    from model_zoo import zoo
    from ssmbench.cli import _common

    monkeypatch.setattr(_common.console, "width", 80)
    assert main(["zoo", "list"]) == 0
    out = capsys.readouterr().out
    assert max(len(line.rstrip()) for line in out.splitlines()) <= 80
    lines = out.splitlines()
    for entry in zoo.load_zoo().values():
        index = next(i for i, line in enumerate(lines) if line.startswith(f" {entry.name} "))
        metrics = entry.metrics
        for key, n_key in (("clean_acc", "n_examples"), ("pgd10_acc", "n_examples"), ("autoattack_acc", "autoattack_examples")):
            # The accuracy on the name's line, its 95% Wilson interval right under it.
            value, interval = with_interval(metrics[key], *wilson(round(metrics[key] * metrics[n_key]), int(metrics[n_key]))).split(" ")
            assert f" {value}" in lines[index] and interval in lines[index + 1]
        assert f"n = {int(metrics['n_examples'])}/{int(metrics['autoattack_examples'])}" in lines[index + 1]


def test_zoo_show_of_a_name_gives_its_description(capsys) -> None:
    assert main(["zoo", "show", "s4-pgd-tanh-digits"]) == 0
    assert "studies/digits-full.toml" in capsys.readouterr().out


def test_zoo_show_reads_a_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.manual_seed(0)
    model = build_model("s4d", "digits", d_model=16, d_state=8, n_layers=1, ads="tanh")
    path = tmp_path / "m.safetensors"
    save(model, path, CheckpointMeta(model.config, kind="last", epoch=2))
    assert main(["zoo", "show", str(path)]) == 0
    out = capsys.readouterr().out
    params = sum(p.numel() for p in model.parameters())
    assert f"{params:,}" in out and "last" in out and '"ads": "tanh"' in out


@pytest.mark.parametrize("args", [["zoo", "show", "no-such-model"], ["zoo", "show", "/etc/hostname"]])
def test_bad_targets_give_one_line_and_exit_2(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err


def test_every_command_has_help_with_an_example(capsys: pytest.CaptureFixture[str]) -> None:
    import typer.main

    from ssmbench.cli import app

    group = typer.main.get_command(app)
    missing = []
    for name, command in group.commands.items():
        subcommands = getattr(command, "commands", {name: command})
        for sub_name, sub in subcommands.items():
            if "Example" not in (sub.help or ""):
                missing.append(f"{name} {sub_name}")
    assert not missing, f"commands without an example in --help: {missing}"
