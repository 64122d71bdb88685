"""Feature pass: streaming results equal a brute-force computation over the whole corpus."""

from __future__ import annotations

import pytest
import torch

from sae.activations import Harvester, pack_blocks
from sae.analysis._feature_stream import priority
from sae.analysis.features import (
    FeatureConfig,
    compute_features,
    load_features,
    parse_latents,
    quantile_groups,
    save_features,
)
from sae.model import SparseAutoencoder
from tests._synthetic import centred_sae

HOOK = "blocks.1.hook_resid_post"
N_TOKENS = 1200
CFG = FeatureConfig(n_top=6, n_quantiles=4, per_quantile=3, window_left=5, window_right=2, context=32,
                    batch=3, n_logits=4, n_neighbours=3)


def _sae(activation: str, model, source, seed: int = 1) -> SparseAutoencoder:
    return centred_sae(model, source, activation, d_sae=40, k=5, seed=seed, hook=HOOK)


def _brute_force(sae, model, source, cfg):
    """Dense latents of every kept token of the corpus: lat_NTF, tokens_NT (-1 at BOS / pad)."""
    blocks = pack_blocks(str(source), model.tokenizer, cfg.context, N_TOKENS)
    with torch.inference_mode():
        acts_NTD = Harvester(model, [HOOK]).run(blocks.tokens_NT)[HOOK]
        lat_NTF = sae.encode(acts_NTD.flatten(0, 1)).view(*acts_NTD.shape[:2], -1)
    lat_NTF = lat_NTF * blocks.keep_NT[..., None]
    return lat_NTF, torch.where(blocks.keep_NT, blocks.tokens_NT, -1)


def _window(lat_NTF, tokens_NT, n, t, f, cfg):
    T = tokens_NT.shape[1]
    toks, acts = [], []
    for p in range(t - cfg.window_left, t + cfg.window_right + 1):
        inside = 0 <= p < T
        toks.append(int(tokens_NT[n, p]) if inside else -1)
        acts.append(float(lat_NTF[n, p, f]) if inside else 0.0)
    return toks, acts


def _check_top(data, lat_NTF, tokens_NT, cfg):
    N, T, F = lat_NTF.shape
    best_NF = lat_NTF.max(1).values
    pos_NF = (lat_NTF == best_NF[:, None]).int().argmax(1)  # first position of the maximum
    for f in range(F):
        # Ties (equal prefixes give equal values) go to the earlier block.
        ranked = best_NF[:, f].argsort(descending=True, stable=True).tolist()
        order = [n for n in ranked if best_NF[n, f] > 0][:cfg.n_top]
        got = [(int(r), float(v)) for r, v in zip(data.top_row_FS[f], data.top_val_FS[f], strict=True) if r >= 0]
        assert [r for r, _ in got] == [n * T + int(pos_NF[n, f]) for n in order], f"latent {f}"
        torch.testing.assert_close(torch.tensor([v for _, v in got]), best_NF[order, f], rtol=1e-5, atol=1e-6)
        for s, n in enumerate(order):
            toks, acts = _window(lat_NTF, tokens_NT, n, int(pos_NF[n, f]), f, cfg)
            assert data.top_tokens_FSW[f, s].tolist() == toks
            torch.testing.assert_close(data.top_acts_FSW[f, s], torch.tensor(acts), rtol=1e-5, atol=1e-6)


def _check_sample(data, lat_NTF, tokens_NT, cfg):
    N, T, F = lat_NTF.shape
    S = cfg.n_sample
    for f in range(F):
        rows = (lat_NTF[..., f].flatten() > 0).nonzero().squeeze(1)
        keys = priority(rows, torch.full_like(rows, f), cfg.seed)
        chosen = rows[keys.argsort()[:S]]
        vals = lat_NTF[..., f].flatten()[chosen]
        order = vals.argsort(descending=True, stable=True)
        chosen, vals = chosen[order], vals[order]
        m = chosen.numel()
        assert data.sample_row_FS[f, :m].tolist() == chosen.tolist(), f"latent {f}"
        assert (data.sample_row_FS[f, m:] == -1).all()
        torch.testing.assert_close(data.sample_val_FS[f, :m], vals, rtol=1e-5, atol=1e-6)
        for s, row in enumerate(chosen.tolist()):
            toks, acts = _window(lat_NTF, tokens_NT, row // T, row % T, f, cfg)
            assert data.sample_tokens_FSW[f, s].tolist() == toks
            torch.testing.assert_close(data.sample_acts_FSW[f, s], torch.tensor(acts), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("activation", ["topk", "relu"])
def test_streaming_pass_equals_brute_force(tiny_model, tiny_corpus, activation):
    sae = _sae(activation, tiny_model, tiny_corpus)
    data = compute_features(sae, tiny_model, str(tiny_corpus), N_TOKENS, CFG, progress=False)
    lat_NTF, tokens_NT = _brute_force(sae, tiny_model, tiny_corpus, CFG)
    flat_XF = lat_NTF.flatten(0, 1)
    assert data.n_tokens == N_TOKENS
    assert data.count_F.tolist() == (flat_XF > 0).sum(0).tolist()
    torch.testing.assert_close(data.max_F, flat_XF.max(0).values)
    mean_F = flat_XF.sum(0) / (flat_XF > 0).sum(0).clamp_min(1)
    torch.testing.assert_close(data.mean_F, mean_F, rtol=1e-4, atol=1e-6)
    assert data.hist_FH.sum(1).tolist() == data.count_F.tolist()
    assert (data.count_F > 0).sum() > 30, "the random SAE should make most latents fire"
    _check_top(data, lat_NTF, tokens_NT, CFG)
    _check_sample(data, lat_NTF, tokens_NT, CFG)
    # A subset of latents gets exactly its rows of the full result.
    part = compute_features(sae, tiny_model, str(tiny_corpus), N_TOKENS, CFG, latents="2,7-9", progress=False)
    for name in ("count_F", "top_row_FS", "top_acts_FSW", "sample_row_FS", "sample_tokens_FSW", "hist_FH"):
        assert torch.equal(getattr(part, name), getattr(data, name)[[2, 7, 8, 9]]), name


def test_logit_effects_match_the_model_and_neighbours_the_decoder(tiny_model, tiny_corpus):
    sae = _sae("topk", tiny_model, tiny_corpus)
    data = compute_features(sae, tiny_model, str(tiny_corpus), 200, CFG, latents="3,5-7", progress=False)
    assert data.latents_F.tolist() == [3, 5, 6, 7]
    hf = tiny_model.hf_model
    # Direct path: the decoder row through the final RMSNorm weight and the unembedding.
    eff_FV = (sae.W_dec[data.latents_F] * hf.model.norm.weight) @ hf.lm_head.weight.t()
    top = eff_FV.topk(CFG.n_logits, dim=1)
    assert data.logit_pos_ids_FL.tolist() == top.indices.tolist()
    torch.testing.assert_close(data.logit_pos_FL, top.values.detach())
    assert data.logit_neg_ids_FL.tolist() == eff_FV.topk(CFG.n_logits, dim=1, largest=False).indices.tolist()
    unit = torch.nn.functional.normalize(sae.W_dec.detach(), dim=1)
    cos = unit[data.latents_F] @ unit.t()
    cos[torch.arange(4), data.latents_F] = -2
    assert data.neighbour_ids_FN.tolist() == cos.topk(CFG.n_neighbours, dim=1).indices.tolist()


def test_save_load_round_trip_and_quantile_groups(tiny_model, tiny_corpus, tmp_path):
    sae = _sae("topk", tiny_model, tiny_corpus)
    data = compute_features(sae, tiny_model, str(tiny_corpus), 300, CFG, latents="0-4", progress=False)
    back = load_features(save_features(data, tmp_path / "fd"))
    assert torch.equal(back.top_tokens_FSW, data.top_tokens_FSW) and back.token_strings == data.token_strings
    assert back.meta["hook"] == HOOK and back.n_tokens == 300
    used = set(data.top_tokens_FSW[data.top_tokens_FSW >= 0].tolist())
    assert used <= set(data.token_strings)
    assert quantile_groups(torch.tensor([5.0, 4, 3, 2, 1, 0, 0]), 2) == [(0, 2), (2, 5)]
    assert quantile_groups(torch.tensor([5.0, 0, 0]), 4) == [(0, 1)]


def test_parse_latents_errors_say_what_to_write():
    assert parse_latents("0-2,7", 10).tolist() == [0, 1, 2, 7]
    with pytest.raises(ValueError, match="outside 0-9"):
        parse_latents("5-12", 10)
    with pytest.raises(ValueError, match="ranges like"):
        parse_latents("a-b", 10)
