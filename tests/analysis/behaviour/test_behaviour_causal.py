"""Interventions: CE cost on ordinary text, steering edits, clamp vs ablation, config errors."""

from __future__ import annotations

import math

import pytest
import torch

from sae.analysis.behaviour.causal import (
    CausalConfig,
    ce_blocks,
    ce_loss,
    edited_logits,
    removal_candidates,
    steering_curve,
)
from sae.analysis.behaviour.metrics import encode, metric_values
from sae.analysis.splice import SplicedModel, set_latents
from tests.analysis.behaviour._planted import CORPUS, HOOK, PLANTED


def test_unedited_ce_is_the_clean_models(planted):
    model, sae, _ = planted
    blocks = ce_blocks(str(CORPUS), model.tokenizer, 512, 64)
    spliced = SplicedModel(model, {HOOK: sae})
    got = ce_loss(edited_logits(spliced, HOOK), blocks, batch=3)
    with torch.no_grad():
        logp = model.bridge(blocks.tokens_NT)[:, :-1].log_softmax(-1)
    nll = -logp.gather(-1, blocks.tokens_NT[:, 1:, None]).squeeze(-1)[blocks.keep_NT[:, 1:]]
    assert math.isclose(got, float(nll.mean()), rel_tol=1e-5)
    assert ce_loss(edited_logits(spliced, HOOK), None) != ce_loss(edited_logits(spliced, HOOK), None)  # NaN


def test_clamp_to_zero_is_ablation_and_add_zero_is_clean(planted):
    model, sae, data = planted
    enc = encode(data, model.tokenizer)
    spliced = SplicedModel(model, {HOOK: sae})
    idx = list(range(6))
    cfg = CausalConfig(scales=(0.0, 1.0), mode="clamp", ce_tokens=0)
    curve = steering_curve(spliced, HOOK, enc, PLANTED, 0.3, cfg, idx=idx)
    ablated = metric_values(edited_logits(spliced, HOOK, set_latents([PLANTED])), enc, idx).mean()
    clean = metric_values(lambda t, m: model.bridge(t), enc, idx).mean()
    assert math.isclose(curve.behaviour[0], float(ablated), rel_tol=1e-5)
    add = steering_curve(spliced, HOOK, enc, PLANTED, 0.3, CausalConfig(scales=(0.0,), ce_tokens=0), idx=idx)
    assert math.isclose(add.behaviour[0], float(clean), rel_tol=1e-4)


def test_candidates_interleave_attribution_and_ranking():
    attr = torch.tensor([0.0, 5.0, -1.0, 2.0, 0.1])
    order = torch.tensor([3, 2, 0, 4, 1])
    assert removal_candidates(attr, order, 4) == [1, 3, 2, 4]
    assert removal_candidates(None, order, 3) == [3, 2, 0]


@pytest.mark.parametrize("kwargs, message", [
    ({"mode": "scale"}, "mode must be one of add, clamp"),
    ({"scales": ()}, "scales"),
    ({"removal_steps": -1}, "removal_steps"),
    ({"cost_floor": 0.0}, "cost_floor"),
])
def test_config_errors_name_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CausalConfig(**kwargs)
