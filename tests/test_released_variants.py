"""S4 and DSS as the seed study's released code configured them (issues 19 and 20).

References: the parameter shapes of state-spaces' V2.1 `HippoSSKernel` (n_ssm copies of Lambda,
P, B; C, dt per channel; Re(Lambda) a buffer unless trainable['A']), a dense recurrence that reads
each channel's copy as h % n_ssm (state-spaces' '(v t)' repeat), and the DSS_softmax kernel written
as the plain sum it is, with its gradient taken by autograd through a detached or live max-shift.
"""

from __future__ import annotations

import math

import pytest
import torch
from ssm_reference import bilinear_nplr_channel, with_conjugates

from model_zoo import build_model, make_config
from model_zoo.config import ModelConfig
from model_zoo.errors import ZooError
from model_zoo.layers.dss import DSSMixer
from model_zoo.layers.s4 import S4Mixer, legs_nplr
from model_zoo.registry import family_name

S4_RELEASED = {"n_ssm": 1, "train_real": False}
DSS_RELEASED = {"w_init": "legs_b", "detach_max": True}


def trainable(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def released_s4_count(layers: int, h: int, n: int, channels: int, classes: int) -> int:
    """The released model's trainable parameters from state-spaces' shapes (complex = 2 reals).

    Per layer: log_dt (H), C (H, N/2) complex, D (H), and one copy of w_imag (N/2), B and P
    (N/2 complex each); log_w_real is a buffer. Then output Linear, the block LayerNorm; the
    encoder Linear + LayerNorm and the head.
    """
    ssm = h + 2 * h * (n // 2) + h + (n // 2) + 2 * (n // 2) * 2
    per_layer = ssm + (h * h + h) + 2 * h
    return layers * per_layer + (channels * h + h) + 2 * h + (h * classes + classes)


def test_parameter_counts_at_the_mnist_preset() -> None:
    """44,202 (released S4) and 44,106 (DSS) are the issue's counts of the released models."""
    assert trainable(build_model("s4", "mnist")) == 68_618
    released = build_model("s4", "mnist", mixer_options=S4_RELEASED)
    assert trainable(released) == 44_202 == released_s4_count(2, 128, 32, 1, 10)
    for options in ({}, DSS_RELEASED):
        assert trainable(build_model("dss", "mnist", mixer_options=options)) == 44_106
        assert trainable(build_model("dss", "mnist", ads="tanh", mixer_options=options)) == 110_154
    # The reference's separate dt for Re and Im: one more dt per channel and layer (2 x 128).
    assert trainable(build_model("dss", "mnist", mixer_options={"sep_dt_re_im": True})) == 44_106 + 2 * 128


def perturbed_shared_s4(d_model: int, d_state: int, n_ssm: int, seed: int) -> S4Mixer:
    torch.manual_seed(seed)
    layer = S4Mixer(d_model, d_state, n_ssm=n_ssm, train_real=False).double()
    with torch.no_grad():
        for param in (layer.p, layer.b, layer.lambda_imag):
            param.add_(0.3 * torch.randn_like(param))
        layer.log_neg_lambda_real.add_(0.2 * torch.randn_like(layer.log_neg_lambda_real))
        layer.log_dt[0] = math.log(0.5)
    return layer


def shared_recurrence(layer: S4Mixer, u: torch.Tensor) -> torch.Tensor:
    """Bilinear recurrence per channel h with (Lambda, P, B) = stored copy h % n_ssm, dense matrices."""

    out = torch.empty_like(u)
    for h in range(u.shape[2]):
        k = h % layer.n_ssm
        lam = with_conjugates(torch.complex(-torch.exp(layer.log_neg_lambda_real[k]), layer.lambda_imag[k]))
        p, b = with_conjugates(torch.view_as_complex(layer.p)[k]), with_conjugates(torch.view_as_complex(layer.b)[k])
        c_tilde = with_conjugates(torch.view_as_complex(layer.c)[h])
        out[:, :, h] = bilinear_nplr_channel(lam, p, b, c_tilde, torch.exp(layer.log_dt[h]), layer.d[h], u[:, :, h])
    return out


@pytest.mark.parametrize("n_ssm", [1, 2])
def test_shared_s4_fft_convolution_equals_recurrence(n_ssm: int) -> None:
    layer = perturbed_shared_s4(4, 8, n_ssm, seed=0)
    u = torch.randn(2, 32, 4, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(layer.core(u), shared_recurrence(layer, u), rtol=1e-4, atol=1e-8)


def test_released_s4_shares_lambda_p_b_and_keeps_re_lambda_fixed() -> None:
    torch.manual_seed(1)
    layer = S4Mixer(6, 8, **S4_RELEASED)
    names = {name for name, _ in layer.named_parameters()}
    assert "log_neg_lambda_real" not in names and "log_neg_lambda_real" in dict(layer.named_buffers())
    system = layer.nplr_system()
    for key in ("lam", "p", "b"):
        assert (system[key] == system[key][:1]).all(), key
    assert not (system["c_tilde"] == system["c_tilde"][:1]).all()
    torch.testing.assert_close(system["lam"][0].real, legs_nplr(8).lam.real.float(), rtol=0, atol=1e-6)
    real_before, imag_before = layer.log_neg_lambda_real.clone(), layer.lambda_imag.detach().clone()
    optimizer = torch.optim.AdamW(layer.parameters(), lr=1e-2, weight_decay=2e-4)
    layer(torch.randn(3, 20, 6)).square().sum().backward()
    optimizer.step()
    assert torch.equal(layer.log_neg_lambda_real, real_before)
    assert not torch.equal(layer.lambda_imag, imag_before)


@pytest.mark.parametrize("bad", [0, 5, -1, 1.5, True])
def test_s4_n_ssm_must_divide_d_model(bad: object) -> None:
    with pytest.raises(ZooError, match="n_ssm must be a positive divisor of d_model"):
        S4Mixer(4, 8, n_ssm=bad)  # type: ignore[arg-type]


def dss_reference(dt: torch.Tensor, lam: torch.Tensor, w: torch.Tensor, length: int, detach: bool) -> torch.Tensor:
    """K[h, l] = Re sum_n W/Lambda * (e^x - 1) / (e^{xL} - 1) * e^{x l}, x = dt_h Lambda_n, as the
    released code evaluates it: for Re x > 0 numerator and sum are divided by e^{x (L-1)}, and
    that shift is a constant (no_grad) when `detach`."""
    if dt.dim() == 1:
        x = dt[:, None] * lam
    else:  # sep_dt_re_im: the real part scaled by dt[:, 0], the imaginary part by dt[:, 1]
        x = dt[:, 0, None] * lam.real + 1j * (dt[:, 1, None] * lam.imag)
    growing = x.real > 0
    shift = torch.where(growing, x * (length - 1), torch.zeros_like(x))
    if detach:
        shift = shift.detach()
    signed = torch.where(growing, -x, x)
    scale = w * (torch.exp(signed) - 1) / ((torch.exp(signed * length) - 1) * lam)
    positions = torch.arange(length, dtype=torch.float64)
    return torch.einsum("hn,hnl->hl", scale, torch.exp(x[..., None] * positions - shift[..., None])).real


def dss_with_growing_modes(options: dict) -> DSSMixer:
    torch.manual_seed(2)
    layer = DSSMixer(3, 8, **options).double()
    with torch.no_grad():
        layer.lam[0, 0] = 0.7  # Re(Lambda) > 0: the shifted branch
        layer.lam[2, 0] = 0.05
        layer.log_dt[1] = math.log(0.4)
        if layer.log_dt.dim() == 2:  # separate dt: make the two parts differ in every channel
            layer.log_dt[:, 1] += torch.tensor([0.9, -1.3, 0.4], dtype=torch.float64)
    return layer


DT_MODES = [{}, DSS_RELEASED, {"sep_dt_re_im": True}, {**DSS_RELEASED, "sep_dt_re_im": True}]


@pytest.mark.parametrize("options", DT_MODES, ids=["default", "released", "sep-dt", "released-sep-dt"])
def test_dss_kernel_equals_the_reference_formula(options: dict) -> None:
    layer = dss_with_growing_modes(options)
    system = layer.diagonal_system()
    for length in (33, 64):
        expected = dss_reference(system["dt"], system["lam"], system["w"], length, detach=False)
        torch.testing.assert_close(layer.kernel(length), expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("detach", [False, True])
def test_dss_gradient_through_the_max_shift(detach: bool) -> None:
    """detach_max gives the released code's gradient (shift constant), the default the true one;
    the two differ only through modes with Re(Lambda) > 0."""
    layer = dss_with_growing_modes({"detach_max": detach})
    layer.kernel(64).sin().sum().backward()
    got = layer.lam.grad.clone()
    lam = layer.lam.detach().clone().requires_grad_(True)
    system = layer.diagonal_system()
    dss_reference(system["dt"].detach(), torch.view_as_complex(lam), system["w"].detach(), 64, detach).sin().sum().backward()
    torch.testing.assert_close(got, lam.grad, rtol=1e-8, atol=1e-10)
    other = dss_with_growing_modes({"detach_max": not detach})
    other.kernel(64).sin().sum().backward()
    growing = (layer.lam[:, 0] > 0).detach()
    assert not torch.allclose(got[growing], other.lam.grad[growing])
    torch.testing.assert_close(got[~growing], other.lam.grad[~growing])


def test_dss_separate_dt_starts_tied_and_trains_both_parts() -> None:
    """At init both parts share one dt (the reference tiles it), so the kernel equals the tied
    layer's; the gradient then reaches dt_re and dt_im apart."""
    torch.manual_seed(5)
    tied = DSSMixer(4, 8).double()
    torch.manual_seed(5)
    separate = DSSMixer(4, 8, sep_dt_re_im=True).double()
    assert separate.log_dt.shape == (4, 2)
    torch.testing.assert_close(separate.log_dt[:, 0], separate.log_dt[:, 1], rtol=0, atol=0)
    torch.testing.assert_close(separate.kernel(50), tied.kernel(50), rtol=1e-12, atol=1e-14)
    separate.kernel(50).sin().sum().backward()
    grad = separate.log_dt.grad
    assert grad.shape == (4, 2) and (grad[:, 0] - grad[:, 1]).abs().min() > 0


def test_dss_w_init_legs_b_is_complex_normal_times_legs_b() -> None:
    """W / B ~ CN(0, 1): mean 0, E|.|^2 = 1, real and imaginary parts independent with variance 1/2."""
    torch.manual_seed(3)
    layer = DSSMixer(4000, 8, w_init="legs_b")
    ratio = torch.view_as_complex(layer.w).to(torch.complex128) / legs_nplr(8).b
    assert ratio.abs().square().mean().item() == pytest.approx(1.0, abs=0.03)
    assert ratio.real.var().item() == pytest.approx(0.5, abs=0.02)
    assert abs(ratio.mean()).item() < 0.02
    plain = torch.view_as_complex(DSSMixer(4000, 8).w)
    assert plain.abs().square().mean().item() == pytest.approx(2.0, abs=0.06)


def test_unknown_mixer_options_are_refused_with_the_valid_ones() -> None:
    with pytest.raises(ZooError, match="s4 has no mixer option.*n_ssm"):
        make_config("s4", "digits", mixer_options={"nssm": 1})
    with pytest.raises(ZooError, match="unknown DSS w_init"):
        build_model("dss", "digits", mixer_options={"w_init": "xavier"})


@pytest.mark.parametrize(
    ("arch", "options", "name"),
    [
        ("s4", {}, "s4"),
        ("s4", S4_RELEASED, "s4 (released)"),
        ("s4", {"n_ssm": 1}, "s4 (n_ssm=1)"),
        ("s4", {"train_real": False}, "s4 (fixed Re)"),
        ("dss", {}, "dss"),
        ("dss", DSS_RELEASED, "dss (released)"),
        ("dss", {"detach_max": True}, "dss (detached max)"),
        ("dss", {"sep_dt_re_im": True}, "dss (separate dt re/im)"),
        ("dss", {**DSS_RELEASED, "sep_dt_re_im": True}, "dss (released, separate dt re/im)"),
        ("s4d", {}, "s4d"),
    ],
)
def test_family_name_tells_the_variants_apart(arch: str, options: dict, name: str) -> None:
    assert family_name(make_config(arch, "digits", mixer_options=options)) == name


def test_checkpoints_keep_their_variant(tmp_path) -> None:
    """A released model's options travel in the checkpoint; a config written before the options
    existed (no mixer_options key) rebuilds the original model."""
    from model_zoo.checkpoints import CheckpointMeta, load, save

    torch.manual_seed(4)
    model = build_model("s4", "digits", mixer_options=S4_RELEASED, d_model=8, d_state=8)
    path = tmp_path / "m.safetensors"
    save(model, path, CheckpointMeta(model.config, training={"method": "pgd"}, kind="last"))
    loaded, meta = load(path)
    assert family_name(meta.config) == "s4 (released)"
    images = torch.rand(2, 1, 8, 8)
    torch.testing.assert_close(loaded(images), model.eval()(images))
    old = {k: v for k, v in make_config("s4", "digits").to_dict().items() if k != "mixer_options"}
    assert family_name(ModelConfig.from_dict(old)) == "s4"
    assert trainable(build_model("s4", "digits", **{k: v for k, v in old.items() if k in ("n_layers", "d_model", "d_state")})) == 68_618


def test_leaderboard_rows_name_the_variant(tmp_path) -> None:
    """A released model's rows are their own family line: 's4 (released) + AdS (tanh)', not 's4'."""
    from model_zoo.checkpoints import CheckpointMeta, file_sha256, load, save
    from ssmbench.data import load_split
    from ssmbench.evaluate import EvalSettings, evaluate
    from ssmbench.leaderboard_render import family
    from ssmbench.records import result_row

    torch.manual_seed(5)
    path = tmp_path / "m.safetensors"
    model = build_model("s4", "digits", ads="tanh", mixer_options=S4_RELEASED, d_model=8, d_state=8)
    save(model, path, CheckpointMeta(model.config, training={"method": "pgd", "eps": 8 / 255}, kind="best"))
    loaded, meta = load(path)
    x, y = load_split("digits", "test")
    row = result_row("r", str(path), meta, evaluate(loaded, (x, y), "pgd10", EvalSettings(eps=8 / 255, n_examples=4, device="cpu", checks=None)), file_sha256(path))
    assert row.arch == "s4 (released)"
    assert family(row).label == "s4 (released) + AdS (tanh)"
