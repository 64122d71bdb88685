"""The whole pipeline on the tiny model: find_circuit, the HTML page, and `sae circuit`."""

from __future__ import annotations

import argparse
import json

import pytest

from sae.analysis.circuits.cli_snippet import add_parser, cmd_circuit
from sae.analysis.circuits.graph import CircuitConfig, find_circuit, prune
from sae.analysis.circuits.tasks import logit_diff, save_pairs
from sae.dashboard.circuit import write_circuit_page
from sae.formats import save


@pytest.fixture(scope="module")
def circuit(spliced, pairs):
    cfg = CircuitConfig(batch_size=12, check_top=10, curve_sizes=(0, 5, 500), max_nodes=20)
    return find_circuit(spliced, pairs, logit_diff, cfg)


def test_circuit_holds_pruned_nodes_edges_and_checks(circuit, spliced):
    hooks = list(spliced.saes)
    inner = [n for n in circuit.nodes if n.hook in hooks]
    assert 0 < len(inner) <= 20
    keys = {n.key for n in circuit.nodes}
    assert all(e.up in keys and e.down in keys for e in circuit.edges)
    assert any(e.down == ("metric", 0) for e in circuit.edges)
    assert any(e.up == ("hook_embed", 0) for e in circuit.edges)
    assert all(n.top_tokens for n in inner if n.latent >= 0)
    assert circuit.check is not None and len(circuit.check.nodes) == 10
    assert circuit.curve.faithfulness[0] == pytest.approx(0.0, abs=1e-6)
    assert json.loads(json.dumps(circuit.to_dict()))["summary"]["n_pairs"] == circuit.n_pairs


def test_prune_by_influence_and_threshold():
    ranked = [("a", 5.0), ("b", -3.0), ("c", 1.0), ("d", 1.0)]
    assert [k for k, _ in prune(ranked, None, 0.8)] == ["a", "b"]
    assert [k for k, _ in prune(ranked, 1.0, 0.8)] == ["a", "b", "c", "d"]
    assert [k for k, _ in prune(ranked, None, 1.0, limit=3)] == ["a", "b", "c"]


def test_page_is_offline_escaped_and_links_latents(circuit, tmp_path):
    circuit.nodes[2].label = "<script>alert(1)</script>"
    path = write_circuit_page(circuit, tmp_path / "c.html")
    page = path.read_text()
    assert page.count("plotly.js v4") == 1  # the library banner: inlined once, for both figures
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;alert(1)" in page
    assert "<script src" not in page  # nothing fetched from the network
    assert "#latent-" in page and "plotly_click" in page


def test_cli_writes_json_and_html(tiny_model_dir, spliced, pairs, tmp_path):
    specs = []
    for hook, sae in spliced.saes.items():
        save(sae, tmp_path / hook)
        specs.append(f"--sae={hook}={tmp_path / hook}")
    save_pairs(pairs, tmp_path / "pairs.jsonl")
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    args = parser.parse_args(["circuit", *specs, "--model", str(tiny_model_dir),
                              "--pairs", str(tmp_path / "pairs.jsonl"), "--out", str(tmp_path / "out"),
                              "--check-top", "5", "--curve", "0,5,500",
                              "--batch", "12"])
    result = cmd_circuit(args)
    saved = json.loads((tmp_path / "out" / "circuit.json").read_text())
    assert saved["summary"]["n_pairs"] == len(pairs) == result["n_pairs"]
    assert (tmp_path / "out" / "circuit.html").stat().st_size > 1_000_000  # plotly.js inlined
    assert result["faithfulness"]["0"] == pytest.approx(0.0, abs=1e-6)


def test_every_reported_node_and_edge_matches_its_small_intervention(circuit, spliced, pairs):
    """The graph's own numbers, all of them, against eps = 1e-3 interventions (tolerance as in
    test_attribution / test_edges)."""
    from sae.analysis.circuits.checks import edge_effects, node_effects

    hooks = list(spliced.saes)
    nodes = [n for n in circuit.nodes if n.hook in hooks]
    effects = node_effects(spliced, pairs, logit_diff, [n.key for n in nodes], eps=1e-3, batch_size=12)
    biggest = max(abs(n.score) for n in nodes)
    for node, e in zip(nodes, effects, strict=True):
        assert abs(node.score - e) <= 0.02 * abs(node.score) + 0.005 * biggest, (node.key, node.score, e)
    inner = [e for e in circuit.edges if e.down[0] != "metric"]
    into_metric = [e for e in circuit.edges if e.down[0] == "metric"]
    assert len(inner) >= 10
    effects = edge_effects(spliced, pairs, logit_diff, [(e.up, e.down) for e in inner], eps=1e-3, batch_size=12)
    biggest = max(abs(e.score) for e in inner)
    for edge, e in zip(inner, effects, strict=True):
        assert abs(edge.score - e) <= 0.02 * abs(edge.score) + 0.005 * biggest, (edge, e)
    scores = {n.key: n.score for n in nodes}
    assert all(e.score == scores[e.up] for e in into_metric)  # into the metric: the node's own score
