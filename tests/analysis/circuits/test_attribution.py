"""Node attributions against real interventions on the tiny random model.

Tolerances: attribution patching is a derivative, so it is compared with a small intervention
(eps = 1e-3 of the clean->corrupted move, measured in float32): the two agree to within 2% of the
node's score plus 0.5% of the largest score (the float32 noise of a difference quotient at that
eps; measured agreement is typically 4 digits). Integrated gradients over one hook sum to the
effect of patching the whole hook, up to the midpoint rule's error (0.5% with 16 steps here).
"""

from __future__ import annotations

import pytest
import torch

from sae.analysis.circuits.attribution import ERROR, AttributionConfig, attribute_nodes, node_values
from sae.analysis.circuits.checks import node_effects
from sae.analysis.circuits.tasks import iter_batches, logit_diff


@pytest.fixture(scope="module")
def atp(spliced, pairs):
    return attribute_nodes(spliced, pairs, logit_diff, AttributionConfig(batch_size=5))


def test_metric_values_are_the_models(spliced, pairs, atp):
    clean = corrupt = 0.0
    for batch in iter_batches(spliced.model.tokenizer, pairs, 32):
        with torch.no_grad():
            clean += float(logit_diff(spliced.model.bridge(batch.clean_NT), batch).sum())
            corrupt += float(logit_diff(spliced.model.bridge(batch.corrupt_NT), batch).sum())
    assert atp.metric_clean == pytest.approx(clean / len(pairs), abs=1e-5)
    assert atp.metric_corrupt == pytest.approx(corrupt / len(pairs), abs=1e-5)
    assert abs(atp.metric_clean - atp.metric_corrupt) > 1e-2  # the pairs do move the metric


def test_every_top_node_matches_a_small_intervention(spliced, pairs, atp):
    ranked = atp.ranked()
    nodes = [n for n, _ in ranked[:20]] + [(h, ERROR) for h in list(spliced.saes)]
    scores = [atp.get(n) for n in nodes]
    effects = node_effects(spliced, pairs, logit_diff, nodes, eps=1e-3)
    biggest = max(abs(s) for s in scores)
    for node, s, e in zip(nodes, scores, effects, strict=True):
        assert abs(s - e) <= 0.02 * abs(s) + 0.005 * biggest, (node, s, e)
    assert len([s for s in scores if abs(s) > 0.1 * biggest]) >= 5  # not a vacuous comparison


def _layer_patch_effect(spliced, pairs, hook) -> float:
    total = 0.0
    for batch in iter_batches(spliced.model.tokenizer, pairs, 16):
        patch, _ = node_values(spliced, batch.corrupt_NT, batch)
        clean, logits = node_values(spliced, batch.clean_NT, batch)
        run = spliced.run(batch.clean_NT, mask_NT=batch.mask_NT, edits={hook: lambda _, p=patch: p.latents[hook]},
                          error_edits={hook: lambda _, p=patch: p.errors[hook]})
        total += float((logit_diff(run.logits_NTV, batch) - logit_diff(logits, batch)).sum())
    return total / len(pairs)


def test_integrated_gradients_sum_to_the_patching_effect(spliced, pairs, atp):
    ig = attribute_nodes(spliced, pairs, logit_diff, AttributionConfig(method="ig", steps=16, batch_size=12))
    for hook in list(spliced.saes):
        actual = _layer_patch_effect(spliced, pairs, hook)
        ig_sum = float(ig.latents[hook].sum()) + ig.errors[hook]
        assert ig_sum == pytest.approx(actual, rel=5e-3, abs=1e-5), hook
    # whichever hook is patched, the last one carries everything: the same total effect
    first = _layer_patch_effect(spliced, pairs, list(spliced.saes)[0])
    assert first == pytest.approx(atp.metric_corrupt - atp.metric_clean, abs=1e-5)


def test_through_mode_latent_gradient_is_the_partial_derivative(spliced, pairs):
    """In pass-through mode dm/df = W_dec dm/dx' (not zero), and dm/derr = dm/dx'."""
    batch = next(iter_batches(spliced.model.tokenizer, pairs, 4))
    run = spliced.run(batch.clean_NT, mask_NT=batch.mask_NT, grad=True, through=True)
    hook = list(spliced.saes)[0]
    g_f, g_e = torch.autograd.grad(logit_diff(run.logits_NTV, batch).sum(), [run.latents[hook], run.errors[hook]])
    expected = g_e @ spliced.saes[hook].W_dec.detach().T
    torch.testing.assert_close(g_f, expected, atol=1e-6, rtol=1e-4)
    assert g_f.abs().max() > 1e-4
