"""Component-wise error analysis against closed forms."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from model_zoo import build_model
from model_zoo.checkpoints import CheckpointMeta, save
from ssmbench import analysis
from ssmbench.cli import main


def linear_block_model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model("s4d", "digits", ads="relu", attention=True, d_model=8, d_state=4, n_layers=1).eval()
    with torch.no_grad():
        model.blocks[0].mixer.out_proj.weight.copy_(3 * torch.eye(8))
        model.blocks[0].mixer.out_proj.bias.zero_()
    return model


def test_known_linear_layer_gives_closed_form_mse_and_change_rate() -> None:
    """out_proj = 3 I: the MSE after is 9x the MSE before, a change rate of exactly 8."""
    model = linear_block_model()
    clean = torch.rand(6, 1, 8, 8)
    adv = (clean + 0.05 * torch.randn_like(clean)).clamp(0, 1)
    changes = analysis.compare(model, clean, adv, "test")
    linear = next(c for c in changes if c.component == "Linear" and c.metric == "mse")
    assert linear.after == pytest.approx(9 * linear.before, rel=1e-5)
    assert linear.change_rate == pytest.approx(8.0, rel=1e-4)


def test_kl_is_softmax_kl_per_token() -> None:
    clean = torch.tensor([[[0.0, 1.0], [2.0, 0.0]]])
    adv = torch.tensor([[[1.0, 0.0], [2.0, 0.0]]])
    p = torch.softmax(torch.tensor([0.0, 1.0]), 0)
    q = torch.softmax(torch.tensor([1.0, 0.0]), 0)
    expected = (p * (p / q).log()).sum().item() / 2  # the second token is unchanged
    assert analysis.token_kl(clean, adv) == pytest.approx(expected, rel=1e-6)


def test_components_cover_ssm_ads_linear_and_attention() -> None:
    model = linear_block_model()
    names = [site.component for site in analysis.component_sites(model)]
    assert names == ["SSM", "AdS", "Linear", "Attention"]
    plain = build_model("s4d", "digits", d_model=8, d_state=4, n_layers=2)
    assert [s.component for s in analysis.component_sites(plain)] == ["SSM", "Linear"] * 2
    mega = build_model("mega", "digits", d_model=8, d_state=4, n_layers=1)
    assert [s.component for s in analysis.component_sites(mega)] == ["EMA", "Gated attention"]


def test_activations_chain_between_components() -> None:
    """The SSM's 'after' is the AdS 'before', and AdS's 'after' is the Linear's 'before'."""
    model = linear_block_model()
    clean = torch.rand(4, 1, 8, 8)
    adv = (clean + 0.03).clamp(0, 1)
    by_name = {(c.component, c.metric): c for c in analysis.compare(model, clean, adv, "train")}
    assert by_name[("SSM", "mse")].after == by_name[("AdS", "mse")].before
    assert by_name[("AdS", "mse")].after == by_name[("Linear", "mse")].before


def test_analyze_cli_writes_table_parquet_and_png(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = linear_block_model()
    path = tmp_path / "best.safetensors"
    save(model, path, CheckpointMeta(model.config, training={"method": "pgd"}, kind="best"))
    assert main(["analyze", str(tmp_path), "--n-examples", "16", "--out", str(tmp_path / "a")]) == 0
    table = pq.read_table(tmp_path / "a" / "best-components.parquet").to_pylist()
    assert {row["split"] for row in table} == {"train", "test"}
    assert {row["component"] for row in table} == {"SSM", "AdS", "Linear", "Attention"}
    linear = [r for r in table if r["component"] == "Linear" and r["metric"] == "mse"]
    assert all(r["change_rate"] == pytest.approx(8.0, rel=1e-3) for r in linear)
    assert (tmp_path / "a" / "best-components.png").stat().st_size > 10_000
    assert "Change rate" in capsys.readouterr().out
