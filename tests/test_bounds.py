"""Certified bounds: the LTI gain is exact, every interval encloses what the model computes,
certified examples are never broken by an attack, and the CLI writes its report."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

import ssmbench
from model_zoo.layers import get_mixer
from model_zoo.zoo import get_entry, load_zoo
from ssmbench import bound_report, bounds, intervals
from ssmbench.analysis import ActivationRecorder
from ssmbench.attacks import PGD, predict
from ssmbench.cli import main
from ssmbench.intervals import Box

LENGTH = 32
SHIPPED = sorted(name for name, entry in load_zoo().items() if entry.file)


def random_mixer(arch: str, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    mixer = get_mixer(arch).cls(8, 8).double().eval()
    if hasattr(mixer, "d"):  # D of both signs, so that some channels' K[0] agree with it and some do not
        with torch.no_grad():
            mixer.d.copy_(torch.tensor([1.0, -1.0] * 4) * (0.5 + torch.rand(8)))
    return mixer


def linear_part(arch: str, mixer: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The map whose gain `lti_gain` claims: the SSM core, or Mega's EMA before its SiLU."""
    if arch == "mega":
        return mixer.ema.convolve(x.transpose(1, 2)).transpose(1, 2) + mixer.ema.omega * x
    return mixer.core(x)


def impulse_response(arch: str, mixer: torch.nn.Module) -> torch.Tensor:
    """(L, H_out, H_in) by feeding unit impulses through the layer itself (FFT path, no kernel code).
    Impulse at the last step: for Mega's two-sided EMA the response then shows the causal lags."""
    h = 8
    impulses = torch.zeros(h, LENGTH, h, dtype=torch.float64)
    impulses[torch.arange(h), 0, torch.arange(h)] = 1.0
    with torch.no_grad():
        out = linear_part(arch, mixer, impulses)  # (k, L, h): response at lag l to input channel k
    return out.permute(1, 2, 0)


@pytest.mark.parametrize("arch", ["s4", "dss", "s4d", "s5", "mega"])
@pytest.mark.parametrize("seed", [0, 1])
def test_lti_gain_is_exact_and_attained_by_the_kernels_sign_pattern(arch, seed):
    mixer = random_mixer(arch, seed)
    gain = bounds.lti_gain(arch, mixer, LENGTH)
    response = impulse_response(arch, mixer)  # (L, H, H)
    if arch != "mega":  # causal: the layer's own impulse response has exactly the claimed l1 rows
        torch.testing.assert_close(gain, response.abs().sum(dim=(0, 2)), rtol=1e-9, atol=1e-9)
    eps = 0.01
    x = torch.randn(16, LENGTH, 8, dtype=torch.float64)
    with torch.no_grad():
        clean = linear_part(arch, mixer, x)
        for _ in range(5):  # random perturbations never move any output by more than eps * gain
            delta = eps * (2 * torch.rand_like(x) - 1)
            moved = (linear_part(arch, mixer, x + delta) - clean).abs().amax(dim=(0, 1))
            assert (moved <= eps * gain + 1e-9).all()
            corners = eps * torch.sign(torch.randn_like(x))
            assert ((linear_part(arch, mixer, x + corners) - clean).abs().amax(dim=(0, 1)) <= eps * gain + 1e-9).all()
        # The sign pattern of channel h's row of the response, reversed in time, attains the bound
        # at the last step (Mega's two-sided EMA: at the step whose lags weigh most).
        for h in range(8):
            if arch == "mega":
                forward, backward = bounds.ema_response(mixer, LENGTH)
                t = int(bounds.two_sided_reach(forward, backward)[h].argmax())
                lags = torch.arange(LENGTH)
                past, future = lags[lags <= t], lags[lags > t]
                pattern = torch.zeros(LENGTH, 8, dtype=torch.float64)
                pattern[past, h] = torch.sign(forward[h, t - past])
                pattern[future, h] = torch.sign(backward[h, future - t])
            else:
                t = LENGTH - 1
                pattern = torch.sign(response[t - torch.arange(LENGTH), h, :])  # (s, k) = sign K[t - s, h, k]
            moved = linear_part(arch, mixer, x[:1] + eps * pattern[None]) - clean[:1]
            torch.testing.assert_close(moved[0, t, h], eps * gain[h], rtol=1e-9, atol=1e-12)
    if arch in bounds.SISO_ARCHS:  # ||K||_1 + |D| bounds it, with equality when K[0] and D agree in sign
        kernel, d = mixer.kernel(LENGTH).detach(), mixer.d.detach()
        loose = kernel.abs().sum(dim=1) + d.abs()
        assert (gain <= loose + 1e-12).all()
        same = torch.sign(kernel[:, 0]) == torch.sign(d)
        torch.testing.assert_close(gain[same], loose[same])
        assert (gain[~same] < loose[~same]).all() and (~same).any() and same.any()


def _samples(box_x: torch.Tensor, eps: float, generator: torch.Generator) -> list[torch.Tensor]:
    """Random points of the clipped eps-box: uniform ones and corners."""
    points = []
    for corner in (False, True, False):
        noise = torch.rand(box_x.shape, generator=generator, dtype=box_x.dtype) * 2 - 1
        points.append((box_x + eps * (noise.sign() if corner else noise)).clamp(0, 1))
    return points


@pytest.mark.parametrize("name", SHIPPED)
def test_every_recorded_interval_encloses_perturbed_activations(name, test_set):
    """For every component of every shipped model, at a radius where IBP is still finite and
    at the benchmark's 8/255: each input's and output's box contains the activations of random
    points (and corners) of the eps-box."""
    model64 = bounds.as_float64(ssmbench.load(name))
    images = test_set[0][:3].double()
    labels = test_set[1][:3]
    generator = torch.Generator().manual_seed(0)
    modules = {id(m): m for m in model64.modules()}
    for eps in (1e-5, 8 / 255):
        propagation = bounds.propagate(model64, images, labels, eps)
        for point in _samples(images, eps, generator):
            recorder = ActivationRecorder(iter(modules[key[0]] for key in propagation.records))  # one pass each
            try:
                with torch.no_grad():
                    logits = model64(point)
            finally:
                recorder.close()
            for key, box in propagation.records.items():
                value = recorder.records[key]
                assert box.contains(value, tol=1e-9 * (1 + value.abs().max().item())), (name, eps, type(modules[key[0]]).__name__, key[1])
            margins = logits.gather(1, labels[:, None]) - logits
            lower = propagation.margins.masked_fill(propagation.margins == torch.inf, -torch.inf)  # j = y: no claim
            assert (margins >= lower - 1e-9).all()
    finite = bounds.propagate(model64, images, labels, 1e-5).records
    assert all(torch.isfinite(box.upper).all() for box in finite.values())  # the small radius is informative


def test_interval_operations_enclose_and_linear_maps_are_exact():
    torch.manual_seed(0)
    a = Box(*torch.randn(2, 4, 5, 6, dtype=torch.float64).sort(dim=0).values)
    b = Box(*torch.randn(2, 4, 6, 3, dtype=torch.float64).sort(dim=0).values)
    ops = {
        "matmul": (lambda x, y: x @ y, intervals.matmul(a, b)),
        "softmax": (lambda x, _: torch.softmax(x, -1), intervals.softmax(a)),
        "silu": (lambda x, _: torch.nn.functional.silu(3 * x), intervals.silu(intervals.scale(a, torch.tensor(3.0)))),
        "layer_norm": (lambda x, _: torch.nn.functional.layer_norm(x, (6,), torch.full((6,), -2.0, dtype=x.dtype), None, 1e-5),
                       intervals.layer_norm(a, torch.full((6,), -2.0, dtype=torch.float64), None, 1e-5)),
        "mul": (lambda x, _: x * x.flip(-1), intervals.mul(a, a.map(lambda t: t.flip(-1)))),
    }
    for _ in range(200):
        x = a.lower + (a.upper - a.lower) * torch.rand_like(a.lower)
        y = b.lower + (b.upper - b.lower) * torch.rand_like(b.lower)
        for name, (f, box) in ops.items():
            assert box.contains(f(x, y), tol=1e-12), name
    weight = torch.randn(7, 6, dtype=torch.float64)
    hull = intervals.linear(a, weight)
    corner = torch.where(weight[0] > 0, a.upper, a.lower)  # attains row 0's upper bound
    torch.testing.assert_close((corner @ weight.T)[..., 0], hull.upper[..., 0])


@pytest.mark.parametrize("name", SHIPPED)
def test_certified_never_exceeds_attacked_accuracy(name, test_set):
    """At 8/255 on the zoo entry's AutoAttack examples (the first n test images): every certified
    example survives PGD-10, and the certified count is at most the recorded AutoAttack count."""
    model = ssmbench.load(name)
    entry = get_entry(name)
    n = int(entry.metrics["autoattack_examples"])
    images, labels = test_set[0][:n], test_set[1][:n]
    certified = bounds.certified(bounds.as_float64(model), images, labels, 8 / 255)
    robust = (predict(model, images) == labels) & ~PGD(8 / 255, steps=10)(model, images, labels).success
    assert not (certified & ~robust).any()
    assert int(certified.sum()) <= round(entry.metrics["autoattack_acc"] * n)


def test_certification_is_informative_at_a_tiny_radius(test_set):
    """The propagation is not vacuous: at eps 1e-7 it certifies most of the standard-trained S4's
    correct examples, and still only those that PGD-10 at that radius cannot break."""
    model = ssmbench.load("s4-st-none-digits")
    images, labels = test_set[0][:64], test_set[1][:64]
    certified = bounds.certified(bounds.as_float64(model), images, labels, 1e-7)
    clean = predict(model, images) == labels
    robust = clean & ~PGD(1e-7, steps=10)(model, images, labels).success
    assert not (certified & ~robust).any()
    assert certified.sum() >= 0.9 * clean.sum()


def test_bound_report_and_cli(tmp_path: Path, test_set, capsys):
    model = ssmbench.load("dss-pgd-none-attn-digits")
    report = bound_report.bound_report(model, test_set[0][:16], test_set[1][:16], 8 / 255)
    names = [c.component for c in report.components]
    assert {"SSM", "Linear", "Attention", "LayerNorm", "Attention LayerNorm"} <= set(names)
    for c in report.components:
        assert c.ibp_after >= c.measured_after - 1e-6  # a bound is never below what an attack reaches
        if c.global_gain is not None:  # for linear parts the measured movement respects the global gain
            assert c.measured_after <= c.global_gain * c.measured_before + 1e-6
    assert main(["bound", "s4-pgd-tanh-digits", "--n-examples", "8", "--out", str(tmp_path)]) == 0
    rows = pq.read_table(tmp_path / "s4-pgd-tanh-digits-bound-components.parquet").to_pylist()
    assert [r["component"] for r in rows] == ["SSM", "AdS", "Linear", "LayerNorm"] * 2
    assert (tmp_path / "s4-pgd-tanh-digits-bound.png").read_bytes()[:4] == b"\x89PNG"
    assert "IBP certified" in capsys.readouterr().out
    assert main(["bound", "s4-pgd-tanh-digits", "--eps", "2", "--out", str(tmp_path)]) == 2
