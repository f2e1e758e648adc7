"""Every registered mixer, through the classifier: shapes, gradients, determinism, causality, AdS."""

from __future__ import annotations

import pytest
import torch

from model_zoo import build_model, list_models, make_config
from model_zoo.ads import AdaptiveScaling, build_ads
from model_zoo.errors import ZooError
from model_zoo.layers import MIXERS

SMALL = {"d_model": 16, "d_state": 8, "n_layers": 1}
ARCHS = sorted(MIXERS)
CAUSAL = [name for name in ARCHS if MIXERS[name].causal]


def small_mixer(arch: str, ads: str = "none") -> torch.nn.Module:
    spec = MIXERS[arch]
    kwargs = {"ads": ads} if spec.supports_ads else {}
    return spec.cls(16, 8, **kwargs)


@pytest.mark.parametrize("arch", ARCHS)
def test_mixer_maps_sequence_to_same_shape(arch: str) -> None:
    torch.manual_seed(0)
    out = small_mixer(arch)(torch.randn(3, 21, 16))
    assert out.shape == (3, 21, 16)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("arch", ARCHS)
def test_gradients_reach_input_and_every_parameter(arch: str) -> None:
    torch.manual_seed(0)
    model = build_model(arch, "digits", **SMALL)
    images = torch.rand(4, 1, 8, 8, requires_grad=True)
    model(images).logsumexp(dim=1).sum().backward()
    assert images.grad is not None and torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0
    for name, param in model.named_parameters():
        assert param.grad is not None, f"{name} gets no gradient"
        assert torch.isfinite(param.grad).all(), f"{name} has a non-finite gradient"


@pytest.mark.parametrize("arch", ARCHS)
def test_eval_forward_is_deterministic(arch: str) -> None:
    torch.manual_seed(0)
    model = build_model(arch, "digits", **SMALL).eval()
    images = torch.rand(5, 1, 8, 8)
    assert torch.equal(model(images), model(images))


@pytest.mark.parametrize("arch", CAUSAL)
@pytest.mark.parametrize("ads", ["none", "tanh"])
def test_causal_mixers_ignore_the_future(arch: str, ads: str) -> None:
    torch.manual_seed(0)
    mixer = small_mixer(arch, ads).eval()
    x = torch.randn(2, 30, 16)
    changed = x.clone()
    changed[:, 17:] = torch.randn(2, 13, 16)
    y, y_changed = mixer(x), mixer(changed)
    torch.testing.assert_close(y[:, :17], y_changed[:, :17], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(y[:, 17:], y_changed[:, 17:])


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32)])
def test_model_io_contract(arch: str, shape: tuple[int, int, int]) -> None:
    """(N, C, H, W) in [0, 1] -> logits (N, classes) for each input size the presets use."""
    torch.manual_seed(0)
    c, h, w = shape
    model = build_model(arch, "digits", channels=c, height=h, width=w, **SMALL).eval()
    logits = model(torch.rand(2, c, h, w))
    assert logits.shape == (2, 10)
    assert torch.isfinite(logits).all()


def test_sequence_layout_is_row_major_pixels_with_channels_as_features() -> None:
    images = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)
    seq = build_model("s4d", "digits", channels=3, height=2, width=2, **SMALL).to_sequence(images)
    assert seq.shape == (2, 4, 3)
    # token (row 1, col 0) of image 1 holds that pixel's three channel values
    assert seq[1, 2].tolist() == [images[1, 0, 1, 0], images[1, 1, 1, 0], images[1, 2, 1, 0]]


@pytest.mark.parametrize("act,fn", [("relu", torch.relu), ("sigmoid", torch.sigmoid), ("tanh", torch.tanh)])
def test_ads_equals_closed_form(act: str, fn) -> None:
    torch.manual_seed(0)
    ads = AdaptiveScaling(4, act)
    y = torch.randn(2, 5, 4)
    w_s, b_s, w_b, b_b = ads.scale.weight, ads.scale.bias, ads.shift.weight, ads.shift.bias
    expected = fn(y @ w_s.T + b_s) * y + fn(y @ w_b.T + b_b)
    torch.testing.assert_close(ads(y), expected)


def test_ads_reads_a_transposed_input_with_the_same_values() -> None:
    torch.manual_seed(0)
    ads = AdaptiveScaling(8, "tanh")
    strided = torch.randn(2, 8, 5).transpose(1, 2).requires_grad_()  # (B, L, H) view of (B, H, L), as LTI mixers pass
    dense = strided.detach().contiguous().requires_grad_()
    out_strided, out_dense = ads(strided), ads(dense)
    (grad_strided,) = torch.autograd.grad(out_strided.square().sum(), strided)
    (grad_dense,) = torch.autograd.grad(out_dense.square().sum(), dense)
    assert torch.equal(out_strided, out_dense) and torch.equal(grad_strided, grad_dense)


@pytest.mark.parametrize("act,fn", [("relu", torch.relu), ("sigmoid", torch.sigmoid), ("tanh", torch.tanh)])
def test_ads_backward_equals_autograd_of_the_closed_form_and_passes_gradcheck(act: str, fn) -> None:
    """The hand-written backward against autograd through the formula (every input and weight
    gradient, float64), and gradcheck against finite differences."""
    from torch.autograd import gradcheck

    from model_zoo.ads import AdSGate

    torch.manual_seed(0)
    ads = AdaptiveScaling(4, act).double()
    y = torch.randn(2, 5, 4, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(2, 5, 4, dtype=torch.float64)
    params = [ads.scale.weight, ads.scale.bias, ads.shift.weight, ads.shift.bias]
    w_s, b_s, w_b, b_b = params
    closed_form = fn(y @ w_s.T + b_s) * y + fn(y @ w_b.T + b_b)
    expected = torch.autograd.grad((closed_form * weight).sum(), [y, *params])
    ours = torch.autograd.grad((ads(y) * weight).sum(), [y, *params])
    for mine, theirs in zip(ours, expected):
        torch.testing.assert_close(mine, theirs, rtol=1e-12, atol=1e-12)
    assert gradcheck(lambda y, *p: AdSGate.apply(y, act, *p), (y, *params))


def test_ads_in_frozen_weights_gives_the_input_gradient_and_no_weight_gradient() -> None:
    from model_zoo.frozen import frozen_weights

    torch.manual_seed(0)
    ads = AdaptiveScaling(8, "tanh")
    y = torch.randn(2, 5, 8, requires_grad=True)
    (trained,) = torch.autograd.grad(ads(y).square().sum(), y)
    with frozen_weights(ads):
        out = ads(y)
        out.square().sum().backward()
    assert torch.equal(y.grad, trained)
    assert all(p.grad is None for p in ads.parameters())


def test_ads_none_is_identity_and_ads_sits_before_out_proj() -> None:
    assert isinstance(build_ads(4, "none"), torch.nn.Identity)
    model = build_model("s4d", "digits", ads="sigmoid", **SMALL)
    mixer = model.blocks[0].mixer
    names = [name for name, _ in mixer.named_children()]
    assert isinstance(mixer.ads, AdaptiveScaling)
    assert names.index("ads") < names.index("out_proj")


@pytest.mark.parametrize("arch", [a for a in ARCHS if MIXERS[a].supports_ads])
def test_ads_is_available_on_every_ssm(arch: str) -> None:
    model = build_model(arch, "digits", ads="tanh", **SMALL)
    assert any(isinstance(m, AdaptiveScaling) for m in model.modules())


def test_attention_variant_adds_one_attention_sublayer_per_block() -> None:
    model = build_model("s4d", "digits", attention=True, n_layers=2, d_model=16, d_state=8)
    assert all(block.attention is not None for block in model.blocks)
    assert build_model("s4d", "digits", **SMALL).blocks[0].attention is None


def test_presets_follow_the_paper() -> None:
    mnist, cifar = make_config("s4", "mnist"), make_config("s4", "cifar10")
    assert (mnist.n_layers, mnist.d_model, mnist.d_state) == (2, 128, 32)
    assert (cifar.n_layers, cifar.d_model, cifar.d_state) == (4, 128, 64)
    assert make_config("s5", "mnist").d_state == 128
    assert make_config("mamba", "cifar10").d_state == 16
    assert make_config("mega", "cifar10").mixer_options == {"hidden": 256}
    assert make_config("s4", "tiny-imagenet").classes == 50


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"arch": "s9"}, "unknown architecture 's9'"),
        ({"arch": "s4d", "ads": "gelu"}, "unknown AdS option 'gelu'"),
        ({"arch": "s4d", "dataset": "imagenet"}, "unknown dataset 'imagenet'"),
        ({"arch": "s4d", "depth": 3}, "unknown model option(s) depth"),
    ],
)
def test_bad_names_fail_with_the_valid_choices(kwargs: dict, message: str) -> None:
    with pytest.raises(ZooError, match="choose one of|valid:") as info:
        build_model(**kwargs)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_list_models_filters_by_pattern() -> None:
    assert "s4d" in list_models("s4*")
    assert all(name.startswith("s4") for name in list_models("s4*"))
