"""Checkpoint contract: round trip for every architecture, and refusal of files that can't be trusted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import ssmbench
from model_zoo import build_model
from model_zoo.checkpoints import CheckpointMeta, file_sha256, load, read_meta, save
from model_zoo.errors import CheckpointError
from model_zoo.layers import MIXERS

SMALL = {"d_model": 16, "d_state": 8, "n_layers": 1}


def saved(tmp_path: Path, arch: str = "s4d", **kwargs) -> tuple[torch.nn.Module, Path]:
    torch.manual_seed(0)
    model = build_model(arch, "digits", **{**SMALL, **kwargs}).eval()
    path = tmp_path / f"{arch}.safetensors"
    meta = CheckpointMeta(model.config, training={"method": "pgd", "eps": 8 / 255}, epoch=3, kind="best", seed=7, metrics={"clean_acc": 0.5})
    save(model, path, meta)
    return model, path


@pytest.mark.parametrize("arch", sorted(MIXERS))
@pytest.mark.parametrize("ads,attention", [("none", False), ("tanh", True)])
def test_round_trip_gives_identical_logits(tmp_path: Path, arch: str, ads: str, attention: bool) -> None:
    if ads != "none" and not MIXERS[arch].supports_ads:
        ads = "none"
    model, path = saved(tmp_path, arch, ads=ads, attention=attention)
    loaded, meta = load(path)
    images = torch.rand(3, 1, 8, 8)
    assert not loaded.training
    assert torch.equal(model(images), loaded(images))
    assert meta.config == model.config
    assert (meta.kind, meta.epoch, meta.seed, meta.training["method"]) == ("best", 3, 7, "pgd")


def test_metadata_holds_the_contract_fields(tmp_path: Path) -> None:
    _, path = saved(tmp_path)
    _, raw = read_meta(path)
    for key in ("format_version", "arch", "config", "dataset", "input_shape", "classes", "training", "epoch", "kind", "seed", "metrics"):
        assert key in raw, key
    assert raw["input_shape"] == [1, 8, 8] and raw["classes"] == 10


def test_complex_parameters_are_stored_as_real_views(tmp_path: Path) -> None:
    model = build_model("s4d", "digits", **SMALL)
    model.register_buffer("phase", torch.polar(torch.ones(3), torch.tensor([0.1, 0.2, 0.3])))
    path = tmp_path / "c.safetensors"
    save(model, path, CheckpointMeta(model.config))
    with safe_open(str(path), "pt") as handle:
        stored = handle.get_tensor("phase")
        assert json.loads(handle.metadata()["ssmbench"])["complex"] == ["phase"]
    assert stored.dtype == torch.float32 and stored.shape == (3, 2)
    assert torch.equal(torch.view_as_complex(stored), model.phase)


def test_ssmbench_load_rebuilds_in_eval_mode(tmp_path: Path) -> None:
    model, path = saved(tmp_path)
    loaded = ssmbench.load(path)
    assert not loaded.training
    images = torch.rand(2, 1, 8, 8)
    assert torch.equal(loaded(images), model(images))


def test_tampered_weights_are_refused(tmp_path: Path) -> None:
    _, path = saved(tmp_path)
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF  # flip bits inside the last tensor's data; the header still parses
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum mismatch") as info:
        load(path)
    assert str(path) in str(info.value)


def test_truncated_file_is_refused(tmp_path: Path) -> None:
    _, path = saved(tmp_path)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError) as info:
        load(path)
    assert str(path) in str(info.value)


def test_foreign_safetensors_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "foreign.safetensors"
    save_file({"weight": torch.zeros(2, 2)}, str(path))
    with pytest.raises(CheckpointError, match="not an ssmbench checkpoint"):
        load(path)


def test_non_safetensors_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"\x80\x04not a safetensors file")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load(path)


def test_missing_file_is_refused_with_its_path(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such file"):
        load(tmp_path / "absent.safetensors")


def test_save_is_atomic_and_leaves_no_temp_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, path = saved(tmp_path)
    before = file_sha256(path)

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("model_zoo.files.os.replace", crash)
    with pytest.raises(OSError):
        save(model, path, CheckpointMeta(model.config, epoch=99))
    assert file_sha256(path) == before
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
