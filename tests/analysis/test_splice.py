"""Spliced SAEs keep the model's output, and an edit changes exactly the decoder rows it should."""

from __future__ import annotations

import pytest
import torch

from sae.analysis.splice import SplicedModel, add_to_latent, set_latents
from sae.config import SAEConfig
from sae.model import SparseAutoencoder

HOOKS = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]


def _saes(d: int) -> dict[str, SparseAutoencoder]:
    return {h: SparseAutoencoder(SAEConfig(d_in=d, d_sae=48, activation="topk", k=6, hook_name=h), seed=i)
            for i, h in enumerate(HOOKS)}


def _tokens(model, n=3, t=20):
    gen = torch.Generator().manual_seed(0)
    return torch.randint(3, len(model.tokenizer), (n, t), generator=gen)


def test_splice_without_edit_keeps_logits(tiny_model):
    toks = _tokens(tiny_model)
    clean = tiny_model.bridge(toks)
    run = SplicedModel(tiny_model, _saes(tiny_model.d_model)).run(toks)
    torch.testing.assert_close(run.logits_NTV, clean, atol=1e-4, rtol=1e-4)
    assert set(run.latents) == set(HOOKS) and run.latents[HOOKS[0]].shape == (3, 20, 48)


def test_ablation_moves_the_residual_by_the_decoder_row(tiny_model):
    toks = _tokens(tiny_model)
    saes = _saes(tiny_model.d_model)
    spliced = SplicedModel(tiny_model, {HOOKS[0]: saes[HOOKS[0]]})
    base = spliced.run(toks)
    f = base.latents[HOOKS[0]]
    latent = int((f > 0).sum((0, 1)).argmax())
    edited = spliced.run(toks, edits={HOOKS[0]: set_latents([latent], 0.0)})
    delta_NTD = -f[..., latent, None] * saes[HOOKS[0]].W_dec[latent].detach()

    def manual(act, hook=None):
        return act + delta_NTD

    with torch.no_grad():
        expected = tiny_model.bridge.run_with_hooks(toks, fwd_hooks=[(HOOKS[0], manual)])
    torch.testing.assert_close(edited.logits_NTV, expected, atol=1e-4, rtol=1e-4)
    assert (edited.logits_NTV - base.logits_NTV).abs().max() > 1e-4
    steered = spliced.run(toks, edits={HOOKS[0]: add_to_latent(latent, 2.0)})

    def plus(act, hook=None):
        return act + 2.0 * saes[HOOKS[0]].W_dec[latent].detach()

    with torch.no_grad():
        expected = tiny_model.bridge.run_with_hooks(toks, fwd_hooks=[(HOOKS[0], plus)])
    torch.testing.assert_close(steered.logits_NTV, expected, atol=1e-4, rtol=1e-4)


def test_grad_leaves_and_mask(tiny_model):
    toks = _tokens(tiny_model)
    spliced = SplicedModel(tiny_model, _saes(tiny_model.d_model))
    mask = torch.ones_like(toks, dtype=torch.bool)
    mask[:, 0] = False
    run = spliced.run(toks, mask_NT=mask, grad=True)
    run.logits_NTV[:, -1, 5].sum().backward()
    for hook in HOOKS:
        assert run.latents[hook].grad is not None and run.errors[hook].grad is not None
        # masked positions pass the clean activation through: no gradient reaches their latents
        assert run.latents[hook].grad[:, 0].abs().max() == 0
    # the later layer's latents are computed from the spliced earlier layer (detached by default)
    assert run.errors[HOOKS[1]].grad[:, -1].abs().max() > 0


def test_width_mismatch_is_refused(tiny_model):
    bad = SparseAutoencoder(SAEConfig(d_in=7, d_sae=8, activation="relu"))
    with pytest.raises(ValueError, match="has d_in 7"):
        SplicedModel(tiny_model, {HOOKS[0]: bad})
