"""SparseAutoencoder: each activation's forward against a dense float64 reference."""

from __future__ import annotations

import pytest
import torch

from sae.config import ConfigError, SAEConfig
from sae.model import SparseAutoencoder


def _sae(activation: str, d_in: int = 13, d_sae: int = 37, k: int = 5, **kw) -> SparseAutoencoder:
    sae = SparseAutoencoder(SAEConfig(d_in=d_in, d_sae=d_sae, activation=activation, k=k, **kw), seed=3)
    gen = torch.Generator().manual_seed(4)
    with torch.no_grad():
        sae.b_enc.copy_(torch.randn(d_sae, generator=gen) * 0.1)
        sae.b_dec.copy_(torch.randn(d_in, generator=gen))
        sae.W_enc.add_(torch.randn(d_in, d_sae, generator=gen) * 0.1)
    return sae


def _reference_latents(sae: SparseAutoencoder, x: torch.Tensor) -> torch.Tensor:
    W_enc, b_enc, b_dec = (t.detach().double() for t in (sae.W_enc, sae.b_enc, sae.b_dec))
    pre = (x.double() * sae.input_scale.double() - b_dec) @ W_enc + b_enc
    act = sae.cfg.activation
    if act == "topk":
        thr = pre.topk(sae.cfg.k, dim=-1).values[:, -1:]
        return torch.where(pre >= thr, pre.relu(), 0.0)
    if act == "jumprelu":
        return torch.where(pre > sae.jumprelu_threshold().detach().double(), pre, 0.0)
    if act == "batchtopk":
        return torch.where(pre > sae.threshold.double(), pre, 0.0)
    return pre.relu()


@pytest.mark.parametrize("activation", ["topk", "batchtopk", "jumprelu", "relu"])
@pytest.mark.parametrize("scale", [1.0, 0.37])
def test_encode_decode_match_reference(activation, scale):
    sae = _sae(activation)
    sae.input_scale.fill_(scale)
    if activation == "batchtopk":
        sae.threshold.fill_(0.2)
    x = torch.randn(29, 13) * 3
    lat = sae.encode(x)
    ref = _reference_latents(sae, x)
    torch.testing.assert_close(lat.double(), ref, atol=1e-5, rtol=1e-5)
    recon_ref = (ref @ sae.W_dec.detach().double() + sae.b_dec.detach().double()) / scale
    torch.testing.assert_close(sae.decode(lat).double(), recon_ref, atol=1e-4, rtol=1e-5)


def test_training_forward_equals_inference_for_topk():
    sae = _sae("topk")
    x = torch.randn(17, 13)
    out = sae(x)
    dense = torch.zeros(17, 37).scatter_(1, out.idx_BK, out.vals_BK)
    torch.testing.assert_close(dense, sae.encode(x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.recon_BD, sae.decode(sae.encode(x)), atol=1e-4, rtol=1e-5)
    assert torch.equal(out.l0_B, (dense > 0).sum(-1))


def test_batchtopk_training_forward_keeps_batch_k():
    sae = _sae("batchtopk", k=3)
    x = torch.randn(20, 13) * 4
    out = sae(x)
    pre = sae.pre_acts(x).relu().detach()
    kth = pre.flatten().topk(60).values.min()
    expected = torch.where(pre >= kth, pre, 0.0)
    dense = torch.zeros(20, 37).scatter_add_(1, out.idx_BK, out.vals_BK.detach())
    torch.testing.assert_close(dense, expected, atol=1e-5, rtol=1e-5)


def test_jumprelu_threshold_gets_straight_through_gradient():
    sae = _sae("jumprelu", jumprelu_init_threshold=0.5, jumprelu_bandwidth=2.0)
    x = torch.randn(64, 13)
    out = sae(x)
    out.latents_BF.sum().backward()
    # Rectangle kernel: d/dtheta sum(z H(z - theta)) = -(theta/eps) * #{|z - theta| < eps/2}
    pre = out.pre_BF.detach()
    near = ((pre - 0.5).abs() < 1.0).sum(0).double()
    expected_dtheta = -(0.5 / 2.0) * near
    # through theta = exp(log_threshold): d/dlog = theta * d/dtheta
    torch.testing.assert_close(sae.log_threshold.grad.double(), 0.5 * expected_dtheta, atol=1e-5, rtol=1e-5)


def test_folded_state_encodes_raw_inputs_identically():
    sae = _sae("jumprelu")
    sae.input_scale.fill_(0.25)
    x = torch.randn(11, 13) * 8
    folded = sae.folded_state()
    pre = (x - folded["b_dec"]) @ folded["W_enc"] + folded["b_enc"]
    lat = torch.where(pre > folded["threshold"], pre, 0.0)
    torch.testing.assert_close(lat, sae.encode(x), atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(lat @ folded["W_dec"] + folded["b_dec"], sae.decode(sae.encode(x)),
                               atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("bad, match", [
    ({"activation": "gelu"}, "sae.activation must be one of"),
    ({"k": 0}, r"sae.k must be in \[1, d_sae=8\]"),
    ({"k": 9}, r"sae.k must be in \[1, d_sae=8\]"),
    ({"normalize_input": "layer", "k": 2}, "sae.normalize_input must be one of"),
])
def test_config_errors_name_the_field(bad, match):
    with pytest.raises(ConfigError, match=match):
        SAEConfig(d_in=4, d_sae=8, **bad)
