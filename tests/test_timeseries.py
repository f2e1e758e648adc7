"""UCR/UEA sequences: the archive's sizes, the reader, normalization inside the model, the unboxed
threat model in perturb, every AT method and the attacks, and a CLI train/load round trip."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

import ssmbench
from model_zoo import build_model
from model_zoo.bounds import UNIT, bounds_of
from model_zoo.checkpoints import read_meta
from model_zoo.errors import CheckpointError, UsageError
from model_zoo.training import TrainConfig, list_methods
from model_zoo.training.methods import MethodContext, get_method
from model_zoo.training.perturb import pgd, project
from ssmbench import data
from ssmbench.attacks import AttackSettings
from ssmbench.attacks.autoattack import AutoAttackPart
from ssmbench.attacks.unit_view import UnitView, fold
from ssmbench.checks import CheckConfig, check_unbounded, unbounded_attack
from ssmbench.cli import main
from ssmbench.datasets import DataError
from ssmbench.evaluate import EvalSettings
from ssmbench.evaluate import evaluate as ssmbench_evaluate
from ssmbench.timeseries import SERIES, parse_ts, resample

# The archives' published numbers (the UCR page lists GunPoint as 2 classes, 50 train, 150 test,
# length 150; ACSF1's own file header says 100 / 100 / 1460 / 10 classes; the others are the UCR
# 2018 and UEA 2018 summary tables): (channels, length, classes, train, test).
PUBLISHED = {
    "gunpoint": (1, 150, 2, 50, 150),
    "italypowerdemand": (1, 24, 2, 67, 1029),
    "acsf1": (1, 1460, 10, 100, 100),
    "basicmotions": (6, 100, 4, 40, 40),
    "japanesevowels": (12, 29, 9, 270, 370),
}
EPS = 0.1  # in training standard deviations


def test_every_registered_series_set_is_published() -> None:
    assert set(SERIES) == set(PUBLISHED)
    assert {name for name in data.list_datasets() if data.get_dataset(name).input_kind == "sequence"} == set(PUBLISHED)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_splits_have_the_archives_sizes(name: str) -> None:
    channels, length, classes, n_train, n_test = PUBLISHED[name]
    for split, n in (("train", n_train), ("test", n_test)):
        x, y = data.load_split(name, split)
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert tuple(x.shape) == (n, channels, length)
        assert set(y.tolist()) == set(range(classes))  # every class occurs in both splits
        assert torch.isfinite(x).all()
    assert data.get_dataset(name).input_shape == (channels, length)


def test_raw_units_are_not_squeezed_into_the_unit_box() -> None:
    x, _ = data.load_split("basicmotions", "train")
    assert x.min() < -10 and x.max() > 10  # gyroscope readings, as in the file


TS = """#comment
@problemName Toy
@univariate false
@dimensions 2
@equalLength false
@classLabel true b a
@data
1,2,3:4,5,6:a
0,1:2,3:b
"""


def test_parse_ts_reads_dimensions_labels_and_lengths() -> None:
    parsed = parse_ts(TS, "toy")
    assert parsed.class_names == ["b", "a"] and parsed.labels == ["a", "b"]
    np.testing.assert_array_equal(parsed.cases[0], [[1, 2, 3], [4, 5, 6]])
    assert parsed.cases[1].shape == (2, 2)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (TS.replace("@data", "@nodata"), "no @classLabel or @data"),
        (TS.replace("0,1:2,3:b", "0,?:2,3:b"), "missing values"),
        (TS.replace("0,1:2,3:b", "0,1:2,3:c"), "not in @classLabel"),
        (TS.replace("0,1:2,3:b", "0,1:2,3,4:b"), "unequal length"),
        (TS.replace("0,1:2,3:b", "0,x:2,3:b"), "not a number"),
    ],
)
def test_parse_ts_refuses_what_it_cannot_read_in_one_line(text: str, message: str) -> None:
    with pytest.raises(DataError, match=message) as caught:
        parse_ts(text, "toy")
    assert "\n" not in str(caught.value)


def test_resample_is_linear_interpolation() -> None:
    ramp = np.array([[0.0, 1.0, 2.0, 3.0]])
    np.testing.assert_allclose(resample(ramp, 7), [np.linspace(0.0, 3.0, 7)])  # a ramp stays a ramp
    assert resample(ramp, 4) is ramp
    cases = {split: parse_ts(_japanese_vowels_text(split), split).cases for split in ("train", "test")}
    lengths = {case.shape[1] for split in cases.values() for case in split}
    assert min(lengths) == 7 and max(lengths) == 29  # really variable; resampled to the longest
    x, _ = data.load_split("japanesevowels", "test")
    longest = next(i for i, case in enumerate(cases["test"]) if case.shape[1] == 29)
    np.testing.assert_allclose(x[longest].numpy(), cases["test"][longest], rtol=1e-6)  # kept as it is
    short = next(i for i, case in enumerate(cases["test"]) if case.shape[1] == 7)
    np.testing.assert_allclose(x[short, :, [0, -1]].numpy(), cases["test"][short][:, [0, -1]], rtol=1e-6)  # ends kept


def _japanese_vowels_text(split: str) -> str:
    import gzip

    from ssmbench.timeseries import series_path

    return gzip.decompress(series_path(SERIES["japanesevowels"], split).read_bytes()).decode()


def _small(dataset: str, arch: str = "s4d", **overrides: object) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(arch, dataset, n_layers=1, d_model=16, d_state=8, **overrides)


def test_fit_input_uses_the_series_it_is_given_and_the_model_takes_raw_units() -> None:
    train, _ = data.load_split("basicmotions", "train")
    test, _ = data.load_split("basicmotions", "test")
    model = _small("basicmotions")
    model.fit_input(train)
    flat = train.double().numpy().transpose(1, 0, 2).reshape(6, -1)
    np.testing.assert_allclose(model.input_mean.numpy(), flat.mean(axis=1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.input_std.numpy(), flat.std(axis=1), rtol=1e-5)
    np.testing.assert_allclose(model.input_low.numpy(), flat.min(axis=1))
    assert not torch.allclose(model.input_mean, test.mean(dim=(0, 2)), atol=1e-3)  # not the test statistics
    tokens = model.to_sequence(train)  # (N, L, C), normalized per channel
    np.testing.assert_allclose(tokens.mean(dim=(0, 1)).detach().numpy(), 0.0, atol=1e-5)
    np.testing.assert_allclose(tokens.std(dim=(0, 1), unbiased=False).detach().numpy(), 1.0, atol=1e-5)


def test_a_sequence_model_refuses_images_and_an_image_model_refuses_sequences() -> None:
    with pytest.raises(UsageError, match=r"takes \(N, C, L\) series"):
        _small("gunpoint")(torch.zeros(2, 1, 1, 150))
    with pytest.raises(UsageError, match=r"takes \(N, C, H, W\) images"):
        _small("digits")(torch.zeros(2, 1, 64))


def _fitted(dataset: str, arch: str = "s4d") -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    x, y = data.load_split(dataset, "train")
    model = _small(dataset, arch)
    model.fit_input(x)
    return model.eval(), x[:16], y[:16]


def test_pgd_stays_in_the_relative_ball_and_never_clamps_to_the_unit_box() -> None:
    model, x, y = _fitted("basicmotions")
    std = model.input_std.view(1, -1, 1)
    x_adv = pgd(model, x, y, EPS, EPS / 4, 10, generator=torch.Generator().manual_seed(0), bounds=bounds_of(model))
    ratio = (x_adv - x).abs() / std
    assert ratio.max() <= EPS * (1 + 1e-5)
    assert ratio.max() >= EPS * 0.99  # reaches the ball's surface in every channel's own units
    assert x_adv.min() < -10 and x_adv.max() > 10  # never clamped to [0, 1]
    # The image box of the same radius would have destroyed the series:
    assert (project(x_adv, x, EPS, UNIT) - x).abs().max() > 10


def test_observed_box_keeps_points_inside_the_training_range_or_where_they_were() -> None:
    model, x, y = _fitted("gunpoint")
    test, _ = data.load_split("gunpoint", "test")
    x = torch.cat([x, test[:16]])
    y = torch.cat([y, y])
    bounds = model.input_bounds("observed")
    x_adv = pgd(model, x, y, 1.0, 0.25, 5, generator=torch.Generator().manual_seed(0), bounds=bounds)
    low, high = model.input_low.item(), model.input_high.item()
    assert ((x_adv >= torch.clamp(x, max=low) - 1e-6) & (x_adv <= torch.clamp(x, min=high) + 1e-6)).all()
    assert (x_adv == high).any() or (x_adv == low).any()  # the box binds with a radius of one std
    assert ((x_adv - x).abs() <= 1.0 * model.input_std + 1e-5).all()


def test_box_choices_are_refused_where_they_do_not_apply() -> None:
    with pytest.raises(UsageError, match="does not apply to sequences"):
        _small("gunpoint").input_bounds("unit")
    with pytest.raises(UsageError, match="is for sequence data"):
        _small("digits").input_bounds("none")


@pytest.mark.parametrize("method", list_methods())
def test_every_training_method_perturbs_in_the_relative_ball(method: str) -> None:
    model, x, y = _fitted("basicmotions")
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    config = TrainConfig.from_settings(method=method, eps=EPS, alpha=EPS / 4, steps=3, freeat_m=2, yopo_m=2, yopo_n=2)
    ctx = MethodContext(optimizer, config.method_params, config.threat, generator=torch.Generator().manual_seed(0),
                        bounds=bounds_of(model))
    out = get_method(method)(model, x, y, ctx)
    ratio = (out.x_adv - x).abs() / model.input_std.view(1, -1, 1)
    assert ratio.max() <= EPS * (1 + 1e-5)
    if method == "st":
        assert torch.equal(out.x_adv, x)
    else:
        assert ratio.max() >= EPS * 0.25  # moved by the scaled step, not by eps in raw units (0.1 of ~10)
        assert out.x_adv.max() > 10 and out.x_adv.min() < -10


def test_train_one_epoch_on_gunpoint_then_load_reproduces_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    args = ["train", "s4d", "--at", "pgd", "--dataset", "gunpoint", "--epochs", "1", "--eps", "0.1", "--alpha", "0.025",
            "--batch-size", "25", "--out", str(out)]
    assert main(args) == 0
    capsys.readouterr()
    path = out / "last.safetensors"
    meta, raw = read_meta(path)
    assert raw["input_kind"] == "sequence" and raw["input_shape"] == [1, 150] and meta.training["box"] == "none"
    model = ssmbench.load(path, dataset="gunpoint")
    train, _ = data.load_split("gunpoint", "train")
    assert torch.allclose(model.input_mean, train.mean(), atol=1e-5)  # the statistics travel in the file
    test, labels = data.load_split("gunpoint", "test")
    with torch.no_grad():
        logits = model(test)
        again = ssmbench.load(path)(test)
    assert torch.equal(logits, again)
    assert (logits.argmax(1) == labels).float().mean().item() == pytest.approx(meta.metrics["clean_acc"])
    for other in ("digits", "basicmotions"):
        with pytest.raises(CheckpointError, match=f"does not fit data set {other} ") as caught:
            ssmbench.load(path, dataset=other)
        assert "\n" not in str(caught.value)


def test_an_image_checkpoint_is_refused_for_a_sequence_data_set() -> None:
    with pytest.raises(CheckpointError, match=r"the model \(digits: image \(1, 8, 8\), 10 classes\) does not fit data set gunpoint \(sequence \(1, 150\), 2 classes\)"):
        ssmbench.load("s4-pgd-none-digits", dataset="gunpoint")


def test_bounds_of_a_model_without_declared_bounds_is_the_unit_box() -> None:
    assert bounds_of(torch.nn.Linear(2, 2)) is UNIT
    with pytest.raises(UsageError, match="declares its input bounds"):
        bounds_of(torch.nn.Linear(2, 2), "none")
    assert dataclasses.replace(UNIT).box == "unit"


@pytest.fixture(scope="module")
def trained_gunpoint() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """A briefly trained s4d on GunPoint (standard training), so attacks have something to fool."""
    x, y = data.load_split("gunpoint", "train")
    model = _small("gunpoint")
    model.fit_input(x)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(30):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    test, labels = data.load_split("gunpoint", "test")
    return model.eval(), test[:24], labels[:24]


def test_unit_view_is_an_exact_affine_map_whose_clamp_cannot_bind() -> None:
    x, _ = data.load_split("basicmotions", "test")
    model = _small("basicmotions")
    model.fit_input(data.load_split("basicmotions", "train")[0])
    view = UnitView.of(x, bounds_of(model), EPS)
    v = view.to_unit(x)
    assert v.shape == (40, 6, 10, 10) and fold(150) == (10, 15) and fold(29) == (1, 29)
    torch.testing.assert_close(view.from_unit(v), x, rtol=1e-5, atol=1e-4)
    # The ball around every point lies inside [0, 1] in the view: the backends' clamp is a no-op.
    assert v.min() >= view.eps * (1 - 1e-4) and v.max() <= 1 - view.eps * (1 - 1e-4)
    # Radius eps in the view is eps training stds of each channel in raw units.
    moved = view.from_unit(v + view.eps) - view.from_unit(v)
    torch.testing.assert_close(moved, (EPS * model.input_std).view(1, -1, 1).expand_as(x), rtol=1e-3, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["official", "torchattacks"])
@pytest.mark.parametrize("part", ["apgd-ce", "fab-t", "square"])
def test_autoattack_parts_work_on_sequences_within_the_relative_ball(trained_gunpoint, backend: str, part: str) -> None:
    model, x, y = trained_gunpoint
    settings = AttackSettings(eps=0.5, backend=backend, seed=0)
    attack = AutoAttackPart(part, settings, n_queries=200 if part == "square" else None)
    found = attack(model, x, y)
    ratio = (found.x_adv - x).abs() / model.input_std
    assert ratio.max() <= 0.5 * (1 + 1e-4)
    assert found.x_adv.min() < -1 and found.x_adv.max() > 1  # raw GunPoint values, never squeezed into [0, 1]
    assert found.success.any()  # the view reaches the model: half a std fools a weak model somewhere
    assert torch.equal(found.success, model(found.x_adv).argmax(1) != y)


def test_pgd10_suite_on_sequences_records_the_relative_threat_model(trained_gunpoint) -> None:
    model, x, y = trained_gunpoint
    result = ssmbench_evaluate(model, (x, y), "pgd10", EvalSettings(eps=0.5, checks=None, device="cpu"))
    assert result.threat_model == "Linf-std" and result.n_examples == 24
    assert result.robust_acc < result.clean_acc
    observed = ssmbench_evaluate(model, (x, y), "pgd10", EvalSettings(eps=0.5, checks=None, device="cpu", box="observed"))
    assert observed.threat_model == "Linf-std-observed"
    with pytest.raises(UsageError, match="does not apply to sequences"):
        ssmbench_evaluate(model, (x, y), "pgd10", EvalSettings(eps=0.5, checks=None, device="cpu", box="unit"))


def test_the_unbounded_check_on_sequences_attacks_the_whole_observed_range(trained_gunpoint) -> None:
    """The sequence analogue of eps = 1 on images: a radius of the training range's full width,
    inside that range, so every series in it is reachable (not a fixed radius without a box)."""
    model, x, y = trained_gunpoint
    attack = unbounded_attack(model, seed=0, config=CheckConfig())
    width = float(((model.input_high - model.input_low) / model.input_std).max())
    assert attack.box == "observed" and attack.eps == pytest.approx(width)
    x_adv = attack.perturb(model, x, y)
    low, high = model.input_low.view(1, -1, 1), model.input_high.view(1, -1, 1)
    assert (x_adv >= torch.minimum(low, x) - 1e-5).all() and (x_adv <= torch.maximum(high, x) + 1e-5).all()
    assert (x_adv - x).abs().max() > 0.5 * (high - low).max()  # it does cross the range
    outcome = check_unbounded(model, x, y, seed=0, config=CheckConfig())
    assert outcome.flag is None and "observed box: 0.0% accuracy" in outcome.detail
    image = unbounded_attack(_small("digits"), seed=0, config=CheckConfig())
    assert image.eps == 1.0 and image.box is None
