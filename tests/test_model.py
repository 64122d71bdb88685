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


@pytest.mark.parametrize("activation", ["relu", "jumprelu", "topk"])
def test_training_gradients_equal_plain_autograd(activation):
    """The training forward routes b_dec's gradient around the [B, D] input gradient (a GEMV for
    the dense activations, topk_encode's b_dec_D for TopK); every parameter's gradient must still
    be autograd's through (x * scale - b_dec) @ W_enc + b_enc, in float64."""
    sae = _sae(activation)
    sae.input_scale.fill_(0.7)
    x = torch.randn(23, 13) * 2
    out = sae(x)
    loss = (out.recon_BD - x).pow(2).sum() + (out.latents_BF.sum() if out.latents_BF is not None else 0)
    loss.backward()
    params = {n: p.detach().double().requires_grad_() for n, p in sae.named_parameters()}
    pre = (x.double() * 0.7 - params["b_dec"]) @ params["W_enc"] + params["b_enc"]
    if activation == "topk":
        keep = torch.zeros_like(pre).scatter_(1, out.idx_BK, 1.0)
        lat = pre.relu() * keep
    elif activation == "jumprelu":
        lat = pre * (pre > sae.jumprelu_threshold().detach().double())
    else:
        lat = pre.relu()
    recon = (lat @ params["W_dec"] + params["b_dec"]) / 0.7
    ref = (recon - x.double()).pow(2).sum() + (lat.sum() if activation != "topk" else 0)
    ref.backward()
    for name, p in sae.named_parameters():
        if name == "log_threshold":
            continue  # its straight-through gradient has its own test
        torch.testing.assert_close(p.grad.double(), params[name].grad, rtol=1e-4, atol=1e-4,
                                   msg=lambda m, name=name: f"{name}: {m}")


def test_bf16_encoder_centres_before_rounding():
    """With a bf16 encoder the input is centred in fp32 and then cast: a dimension whose mean is
    large does not drown its small centred signal in bf16 rounding (2^-9 of 60 would be 0.12)."""
    sae = _sae("topk", d_in=16, d_sae=64, k=8)
    gen = torch.Generator().manual_seed(5)
    mean = torch.full((16,), 60.0)
    with torch.no_grad():
        sae.b_dec.copy_(mean)
    x = mean + torch.randn(32, 16, generator=gen) * 0.05
    out16 = sae(x, encoder_dtype=torch.bfloat16)
    out32 = sae(x)
    pre32 = (x - mean) @ sae.W_enc.detach() + sae.b_enc.detach()
    picked16 = pre32.gather(1, out16.idx_BK).relu()
    # bf16-rounded centred inputs: the selected values carry ~2^-9 relative error, not 0.12 absolute.
    torch.testing.assert_close(out16.vals_BK.float(), picked16, rtol=2e-2, atol=2e-3)
    overlap = (out16.idx_BK.sort(1).values == out32.idx_BK.sort(1).values).float().mean()
    assert overlap > 0.9


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
