"""Faithfulness and completeness curves: endpoints are exact, both ablations run, and the
attribution-vs-effect check reports a correlation."""

from __future__ import annotations

import pytest

from sae.analysis.circuits.attribution import attribute_nodes
from sae.analysis.circuits.checks import ablation_curve, attribution_vs_effect, pearson
from sae.analysis.circuits.tasks import logit_diff


@pytest.mark.parametrize("ablation", ["patch", "mean"])
def test_curve_endpoints(spliced, pairs, ablation):
    ranked = [n for n, _ in attribute_nodes(spliced, pairs, logit_diff).ranked()]
    everything = len(ranked)
    curve = ablation_curve(spliced, pairs, logit_diff, ranked, [0, 10, everything], ablation, batch_size=12)
    assert curve.faithfulness[0] == pytest.approx(0.0, abs=1e-6)
    assert curve.completeness[0] == pytest.approx(1.0, abs=1e-6)
    # every node with a nonzero score: the rest never changes between clean and corrupted (patch)
    if ablation == "patch":
        assert curve.faithfulness[-1] == pytest.approx(1.0, abs=1e-3)
        assert curve.completeness[-1] == pytest.approx(0.0, abs=1e-3)
        assert curve.metric_empty == pytest.approx(attribute_nodes(spliced, pairs, logit_diff).metric_corrupt,
                                                   abs=1e-5)
    assert curve.nodes_to_reach(-1e9) == 0


def test_attribution_vs_effect_on_the_top_nodes(spliced, pairs):
    ranked = attribute_nodes(spliced, pairs, logit_diff).ranked()
    check = attribution_vs_effect(spliced, pairs, logit_diff, ranked, top=15, batch_size=12)
    assert len(check.effect) == 15
    # a random model's nodes act nearly linearly at full patching too
    assert check.pearson > 0.5
    assert pearson([1, 2, 3], [2, 4, 6.5]) == pytest.approx(0.9986, abs=1e-3)


def test_bisection_finds_the_smallest_faithful_circuit(spliced, pairs):
    from sae.analysis.circuits.checks import Ablator, smallest_faithful

    ranked = [n for n, _ in attribute_nodes(spliced, pairs, logit_diff).ranked()]
    ab = Ablator(spliced, pairs, logit_diff, "patch", batch_size=12)
    n = smallest_faithful(ab, ranked, 0.5)
    assert n is not None and ab.faithfulness(ranked[:n]) >= 0.5
    # smallest among the sizes bisection can see: one fewer falls short
    assert ab.faithfulness(ranked[:n - 1]) < 0.5
