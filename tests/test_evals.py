"""Evals against brute force, and the spliced CE eval against exact-reconstruction and ablation."""

from __future__ import annotations

import pytest
import torch

from sae.activations import Harvester, pack_blocks
from sae.config import SAEConfig
from sae.evals import evaluate_on_text, sparsity_metrics
from sae.model import SparseAutoencoder

HOOK = "blocks.1.hook_resid_post"


def test_sparsity_metrics_match_brute_force():
    torch.manual_seed(0)
    sae = SparseAutoencoder(SAEConfig(d_in=10, d_sae=40, activation="topk", k=3), seed=1)
    with torch.no_grad():
        sae.b_enc[:5] = -100.0  # five latents can never fire
    x = torch.randn(300, 10) * 2 + 1
    stats = sparsity_metrics(sae, x, batch=64)
    lat = sae.encode(x)
    recon = sae.decode(lat)
    fvu = ((recon - x) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    assert stats.fvu == pytest.approx(fvu.item(), rel=1e-5)
    assert stats.l0 == pytest.approx(3.0)
    fires = (lat > 0).float().mean(0)
    assert stats.dead_frac == pytest.approx((fires == 0).float().mean().item())
    assert stats.dead_frac >= 5 / 40
    assert stats.dense_frac == pytest.approx((fires > 0.1).float().mean().item())
    torch.testing.assert_close(stats.density_F, fires)


def _identity_sae(d: int, hook: str) -> SparseAutoencoder:
    """A ReLU SAE with W_enc = [I, -I], W_dec = [I; -I]: relu(x) - relu(-x) = x exactly."""
    sae = SparseAutoencoder(SAEConfig(d_in=d, d_sae=2 * d, activation="relu", hook_name=hook))
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], 1))
        sae.W_dec.copy_(torch.cat([eye, -eye], 0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def test_exact_reconstruction_recovers_all_ce(tiny_model, tiny_corpus):
    sae = _identity_sae(tiny_model.d_model, HOOK)
    res = evaluate_on_text(sae, tiny_model, str(tiny_corpus), n_tokens=600, context=32, batch=4, progress=False)
    assert res.ce_loss_sae == pytest.approx(res.ce_loss_clean, abs=1e-4)
    assert res.ce_loss_recovered == pytest.approx(1.0, abs=1e-3)
    assert res.kl == pytest.approx(0.0, abs=1e-5)
    assert res.fvu == pytest.approx(0.0, abs=1e-8)
    blocks = pack_blocks(str(tiny_corpus), tiny_model.tokenizer, 32, 600)
    assert res.n_tokens == int(blocks.keep_NT[:, 1:].sum())  # every real next token is a target


def test_spliced_ce_matches_a_manual_intervention(tiny_model, tiny_corpus):
    """CE with the SAE spliced equals a hand-made forward with the hook's output replaced."""
    sae = SparseAutoencoder(SAEConfig(d_in=tiny_model.d_model, d_sae=32, activation="topk", k=4,
                                      hook_name=HOOK), seed=5)
    res = evaluate_on_text(sae, tiny_model, str(tiny_corpus), n_tokens=300, context=32, batch=4, progress=False)
    blocks = pack_blocks(str(tiny_corpus), tiny_model.tokenizer, 32, 300)
    acts = Harvester(tiny_model, [HOOK]).run(blocks.tokens_NT)[HOOK]
    keep = blocks.keep_NT
    patched = acts.clone()
    patched[keep] = sae.decode(sae.encode(acts[keep]))

    def hook_fn(act, hook=None):
        return patched

    with torch.no_grad():
        logits = tiny_model.bridge.run_with_hooks(blocks.tokens_NT, fwd_hooks=[(HOOK, hook_fn)])
        zero = acts.clone()
        zero[keep] = 0.0
        zero_logits = tiny_model.bridge.run_with_hooks(blocks.tokens_NT, fwd_hooks=[(HOOK, lambda a, hook=None: zero)])
    targets = blocks.tokens_NT[:, 1:]
    mask = keep[:, 1:]

    def ce(lg):
        lp = lg[:, :-1].log_softmax(-1)
        return -lp.gather(-1, targets[..., None]).squeeze(-1)[mask].mean().item()

    assert res.ce_loss_sae == pytest.approx(ce(logits), rel=1e-5)
    assert res.ce_loss_zero == pytest.approx(ce(zero_logits), rel=1e-5)
    assert res.kl_zero > 0  # a random model barely changes CE, but its distribution moves
    expected = (res.ce_loss_zero - res.ce_loss_sae) / (res.ce_loss_zero - res.ce_loss_clean)
    assert res.ce_loss_recovered == pytest.approx(expected)
    assert res.kl > 0
