"""The AuxK term: switched off on device when no latent is dead, and a real gradient when some are."""

from __future__ import annotations

import torch

from sae.config import SAEConfig
from sae.model import SparseAutoencoder
from sae.train.losses import compute_loss


def _grads(sae, x, dead, k_aux, aux_active):
    sae.zero_grad(set_to_none=True)
    out = sae(x, dead, k_aux)
    parts = compute_loss(sae, x, out, 1 / 32, 0.0, aux_active)
    parts.total.backward()
    return parts, {n: p.grad.clone() for n, p in sae.named_parameters()}


def test_all_false_dead_mask_with_aux_off_equals_no_aux():
    sae = SparseAutoencoder(SAEConfig(d_in=12, d_sae=40, k=4), seed=0)
    x = torch.randn(64, 12)
    none_parts, none_grads = _grads(sae, x, None, 0, None)
    dead = torch.zeros(40, dtype=torch.bool)
    off_parts, off_grads = _grads(sae, x, dead, 8, dead.any().float())
    assert off_parts.aux == 0 and torch.equal(off_parts.total, none_parts.total)
    for name in none_grads:
        torch.testing.assert_close(off_grads[name], none_grads[name], atol=1e-6, rtol=1e-6)


def test_dead_latents_get_auxk_gradient():
    sae = SparseAutoencoder(SAEConfig(d_in=12, d_sae=40, k=4), seed=0)
    x = torch.randn(64, 12)
    dead = torch.zeros(40, dtype=torch.bool)
    dead[20:] = True
    _, none_grads = _grads(sae, x, None, 0, None)
    parts, grads = _grads(sae, x, dead, 8, dead.any().float())
    assert parts.aux > 0
    # The residual is detached, so AuxK moves only the dead latents' decoder rows and encoder columns.
    # (1e-5: the encoder gradient sums main and AuxK entries in another order, ~1e-7 apart.)
    rows = (grads["W_dec"] - none_grads["W_dec"]).abs().amax(1) > 1e-5
    cols = (grads["W_enc"] - none_grads["W_enc"]).abs().amax(0) > 1e-5
    assert rows[20:].any() and not rows[:20].any()
    assert cols[20:].any() and not cols[:20].any()
