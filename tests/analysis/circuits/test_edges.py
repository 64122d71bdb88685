"""Edge attributions against the matching small intervention, and the chain rule.

An edge u -> d estimates the effect on the metric of moving u towards its corrupted value that
flows through d alone. The matching intervention moves u by eps = 1e-3 of (u_p - u_c), holds every
other node of d's hook at its clean value, and lets d be recomputed. eps = 1e-3 because the
embedding moves a whole token: at eps = 1e-2 some TopK selections downstream already flip
(measured: one embedding edge off by 60%), at 1e-3 none do here. Tolerance as for nodes.
"""

from __future__ import annotations

import pytest

from sae.analysis.circuits.attribution import ERROR, attribute_nodes
from sae.analysis.circuits.checks import edge_effects
from sae.analysis.circuits.edges import EMBED, attribute_edges
from sae.analysis.circuits.tasks import logit_diff


@pytest.fixture(scope="module")
def scores(spliced, pairs):
    return attribute_nodes(spliced, pairs, logit_diff)


def test_every_top_edge_matches_a_small_intervention(spliced, pairs, scores):
    keep = {h: [i for (hh, i), _ in scores.ranked() if hh == h and i != ERROR][:4] for h in list(spliced.saes)}
    edges = attribute_edges(spliced, pairs, logit_diff, keep, batch_size=12)
    top = edges.ranked()[:14]
    hooks = list(spliced.saes)
    assert {u[0] for (u, _), _ in top} >= {EMBED, hooks[0], hooks[1]}  # all three kinds of edge
    effects = edge_effects(spliced, pairs, logit_diff, [k for k, _ in top], eps=1e-3, batch_size=12)
    biggest = max(abs(s) for _, s in top)
    for (edge, s), e in zip(top, effects, strict=True):
        assert abs(s - e) <= 0.02 * abs(s) + 0.005 * biggest, (edge, s, e)


def test_edges_out_of_a_node_sum_to_its_attribution(spliced, pairs, scores):
    everything = {h: list(range(spliced.saes[h].d_sae)) for h in list(spliced.saes)}
    edges = attribute_edges(spliced, pairs, logit_diff, everything, batch_size=12)
    ups = [n for n, _ in scores.ranked() if n[0] != list(spliced.saes)[-1]][:6]
    for u in ups:
        out = sum(v for (a, _), v in edges.scores.items() if a == u)
        assert out == pytest.approx(scores.get(u), rel=1e-4, abs=1e-7), u


def test_edges_must_join_consecutive_hooks(spliced, pairs):
    hooks = list(spliced.saes)
    with pytest.raises(ValueError, match="consecutive"):
        edge_effects(spliced, pairs, logit_diff, [((hooks[0], 1), (hooks[2], 2))], eps=1e-3)
