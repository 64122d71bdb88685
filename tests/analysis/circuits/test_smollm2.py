"""The bundled SmolLM2-135M-Instruct solves the built-in tasks, and attribution patching agrees
with small interventions on it too (random SAEs of the trained SAEs' shape; slow)."""

from __future__ import annotations

import pytest
import torch

from sae.analysis.circuits.attribution import AttributionConfig, attribute_nodes
from sae.analysis.circuits.checks import node_effects
from sae.analysis.circuits.tasks import logit_diff, resolve_pairs, task_accuracy
from sae.analysis.splice import SplicedModel
from sae.config import SAEConfig
from sae.model import SparseAutoencoder

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2():
    import sae.lm

    try:
        return sae.lm.load_model("smollm2-135m-instruct")
    except sae.lm.ModelLoadError as err:
        pytest.skip(str(err))


@pytest.mark.parametrize(("task", "least"), [("capitals", 0.95), ("agreement", 0.75)])
def test_builtin_tasks_are_solved(smollm2, task, least):
    acc = task_accuracy(smollm2, resolve_pairs(task)[:48])
    assert acc.accuracy >= least
    assert acc.clean_metric > 1.0 > acc.corrupt_metric


def test_attribution_patching_is_the_derivative_on_smollm2(smollm2):
    hooks = ["blocks.9.hook_resid_post", "blocks.15.hook_resid_post"]
    saes = {h: SparseAutoencoder(SAEConfig(d_in=576, d_sae=512, activation="topk", k=16, hook_name=h), seed=i)
            for i, h in enumerate(hooks)}
    spliced = SplicedModel(smollm2, saes)
    pairs = resolve_pairs("capitals")[:6]
    scores = attribute_nodes(spliced, pairs, logit_diff, AttributionConfig(batch_size=6))
    nodes = [n for n, _ in scores.ranked()[:6]]
    with torch.no_grad():
        effects = node_effects(spliced, pairs, logit_diff, nodes, eps=1e-2, batch_size=6)
    biggest = max(abs(scores.get(n)) for n in nodes)
    for node, e in zip(nodes, effects, strict=True):
        assert abs(scores.get(node) - e) <= 0.05 * abs(scores.get(node)) + 0.01 * biggest, (node, e)
