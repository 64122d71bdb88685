"""Assemble a circuit: attribute nodes, expand edges into the top nodes, prune, check.

`find_circuit` runs the steps of this package in order:
  1. node attribution (attribution patching or integrated gradients) over all prompt pairs;
  2. node pruning, by an absolute threshold or by cumulative influence (the fewest nodes, largest
     |score| first, whose |scores| add up to a fraction of the total);
  3. edges into the kept nodes of each hook (vector-Jacobian products, `edges.py`), from the
     embeddings and into the metric, pruned the same way;
  4. checks by intervention (`checks.py`): attribution against the actual effect of patching the
     top nodes, and faithfulness/completeness curves against the number of nodes.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..splice import SplicedModel
from .attribution import ERROR, AttributionConfig, Node, NodeScores, attribute_nodes
from .checks import ABLATIONS, AblationCurve, Ablator, AttributionCheck, attribution_vs_effect, smallest_faithful
from .edges import EMBED, METRIC, attribute_edges
from .tasks import Metric, PromptPair

FAITHFUL = 0.8
"""The faithfulness level whose smallest circuit is reported."""


@dataclass
class CircuitConfig:
    """How to find, prune and check a circuit."""

    method: str = "atp"
    """Node attribution: `atp` or `ig`."""
    steps: int = 8
    """Integrated-gradient steps (method ig)."""
    batch_size: int = 16
    """Prompt pairs per forward pass."""
    node_threshold: float | None = None
    """Keep nodes with |score| >= this; None prunes by `node_influence` instead."""
    node_influence: float = 0.8
    """Keep the fewest nodes whose |scores| add up to this fraction of the total (0 < x <= 1)."""
    max_nodes: int = 60
    """At most this many nodes in the graph (the figure stays readable)."""
    edge_nodes: int = 12
    """Per hook, expand edges into at most this many kept latents (plus the error node)."""
    edge_threshold: float | None = None
    """Keep edges with |score| >= this; None prunes by `edge_influence`."""
    edge_influence: float = 0.9
    """Cumulative-influence fraction for edges."""
    edges_per_node: int = 2
    """Also keep each node's strongest outgoing edges (so no kept node hangs unconnected)."""
    check_top: int = 50
    """Compare attribution with the actual patching effect for this many top nodes (0 skips)."""
    curve_sizes: tuple[int, ...] = (0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
    """Circuit sizes (top-n nodes) for the faithfulness and completeness curves; () skips."""
    ablation: str = "patch"
    """How nodes outside the circuit are ablated: `patch` (corrupted value) or `mean`."""

    def __post_init__(self):
        AttributionConfig(self.method, self.steps, self.batch_size)  # validates those three
        if not 0 < self.node_influence <= 1 or not 0 < self.edge_influence <= 1:
            raise ValueError(f"node_influence and edge_influence must lie in (0, 1], got "
                             f"{self.node_influence} and {self.edge_influence}.")
        for name in ("max_nodes", "edge_nodes", "edges_per_node", "check_top"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}.")
        if self.ablation not in ABLATIONS:
            raise ValueError(f"ablation must be one of {', '.join(ABLATIONS)}, got {self.ablation!r}.")


@dataclass
class CircuitNode:
    hook: str
    """Spliced hook, `hook_embed` or `metric`."""
    latent: int
    """Latent index; -1 for an error node; 0 for the embedding and metric nodes."""
    layer: int
    """Column in the figure: 0 embeddings, 1.. the spliced hooks in order, last the metric."""
    score: float
    """Attribution to the metric (mean over pairs)."""
    effect: float | None = None
    """Actual effect of patching the node to its corrupted value, where checked."""
    top_tokens: list[str] = field(default_factory=list)
    """Tokens the latent's decoder row promotes most (W_dec @ W_U)."""
    label: str = ""

    @property
    def key(self) -> Node:
        return (self.hook, self.latent)


@dataclass
class CircuitEdge:
    up: Node
    down: Node
    score: float


@dataclass
class Circuit:
    """A pruned attribution graph and the checks that go with it."""

    nodes: list[CircuitNode]
    edges: list[CircuitEdge]
    hooks: list[str]
    metric_clean: float
    metric_corrupt: float
    n_pairs: int
    method: str
    check: AttributionCheck | None
    curve: AblationCurve | None
    seconds: dict[str, float]
    scores: NodeScores | None = None

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"method": self.method, "n_pairs": self.n_pairs, "metric_clean": self.metric_clean,
                               "metric_corrupt": self.metric_corrupt, "n_nodes": len(self.nodes),
                               "n_edges": len(self.edges), "seconds": self.seconds}
        if self.check is not None:
            out["attribution_vs_effect_pearson"] = self.check.pearson
            out["attribution_vs_effect_pearson_latents"] = self.check.pearson_latents
            out["attribution_vs_effect_sign_agreement"] = self.check.sign_agreement
            out["checked_nodes"] = len(self.check.nodes)
        if self.curve is not None:
            out["nodes_for_0.8_faithfulness"] = self.curve.faithful_nodes
            out["faithfulness"] = dict(zip(map(str, self.curve.sizes), self.curve.faithfulness, strict=True))
            out["completeness"] = dict(zip(map(str, self.curve.sizes), self.curve.completeness, strict=True))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"summary": self.summary(), "hooks": self.hooks,
                "nodes": [asdict(n) for n in self.nodes],
                "edges": [{"up": list(e.up), "down": list(e.down), "score": e.score} for e in self.edges],
                "check": None if self.check is None else asdict(self.check),
                "curve": None if self.curve is None else asdict(self.curve),
                "top_scores": None if self.scores is None else self.scores.to_dict(200)}

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "circuit.json"
        path.write_text(json.dumps(self.to_dict(), indent=1), encoding="utf-8")
        return path


def prune(ranked: list[tuple[Any, float]], threshold: float | None, influence: float, limit: int | None = None):
    """Items with |score| >= threshold, or the fewest top items holding `influence` of the total
    |score|; at most `limit`."""
    if threshold is not None:
        kept = [kv for kv in ranked if abs(kv[1]) >= threshold]
    else:
        total = sum(abs(s) for _, s in ranked)
        kept, acc = [], 0.0
        for kv in ranked:
            if acc >= influence * total:
                break
            kept.append(kv)
            acc += abs(kv[1])
    return kept[:limit] if limit is not None else kept


def _graph_nodes(spliced: SplicedModel, kept: list[tuple[Node, float]], scores: NodeScores) -> list[CircuitNode]:
    from ..labels import label_latents

    hooks = list(spliced.saes)
    nodes = [CircuitNode(EMBED, 0, 0, 0.0, label="token embeddings"),
             CircuitNode(METRIC, 0, len(hooks) + 1, scores.metric_clean - scores.metric_corrupt, label="metric")]
    for hook in hooks:
        latents = [i for (h, i), _ in kept if h == hook and i != ERROR]
        # weights-only labels (promoted tokens, W_dec through the final norm and W_U)
        labels = {lab.latent: lab for lab in label_latents(spliced.saes[hook], spliced.model, latents)}
        for (h, i), s in kept:
            if h != hook:
                continue
            node = CircuitNode(hook, i, hooks.index(hook) + 1, s, label=f"{hook} error")
            if i != ERROR:
                node.label, node.top_tokens = labels[i].label, labels[i].promoted
            nodes.append(node)
    return nodes


def _graph_edges(spliced: SplicedModel, pairs: list[PromptPair], metric: Metric, kept: list[tuple[Node, float]],
                 cfg: CircuitConfig) -> list[CircuitEdge]:
    hooks = list(spliced.saes)
    kept_set = {n for n, _ in kept} | {(EMBED, 0)}
    expand = {h: [i for (hh, i), _ in kept if hh == h and i != ERROR][:cfg.edge_nodes] for h in hooks}
    edges = attribute_edges(spliced, pairs, metric, expand, cfg.batch_size)
    ranked = [(k, v) for k, v in edges.ranked() if k[0] in kept_set and k[1] in kept_set]
    ranked += [((n, (METRIC, 0)), s) for n, s in kept if n[0] == hooks[-1]]
    ranked.sort(key=lambda kv: -abs(kv[1]))
    kept_edges = dict(prune(ranked, cfg.edge_threshold, cfg.edge_influence))
    per_node: dict[Node, int] = {}
    for (u, d), s in ranked:
        if per_node.get(u, 0) < cfg.edges_per_node:
            kept_edges[(u, d)] = s
            per_node[u] = per_node.get(u, 0) + 1
    return [CircuitEdge(u, d, s) for (u, d), s in sorted(kept_edges.items(), key=lambda kv: -abs(kv[1]))]


def find_circuit(spliced: SplicedModel, pairs: list[PromptPair], metric: Metric,
                 cfg: CircuitConfig | None = None, check_pairs: list[PromptPair] | None = None) -> Circuit:
    """Steps 1-4 of the module docstring. `check_pairs` (default: all) are the pairs the
    intervention checks run on, since they cost one forward pass per node or curve point."""
    cfg = cfg or CircuitConfig()
    check_pairs = check_pairs or pairs
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    scores = attribute_nodes(spliced, pairs, metric, AttributionConfig(cfg.method, cfg.steps, cfg.batch_size))
    seconds["nodes"] = time.perf_counter() - t0
    ranked = scores.ranked()
    kept = prune(ranked, cfg.node_threshold, cfg.node_influence, cfg.max_nodes)
    t0 = time.perf_counter()
    edges = _graph_edges(spliced, pairs, metric, kept, cfg)
    seconds["edges"] = time.perf_counter() - t0
    nodes = _graph_nodes(spliced, kept, scores)
    check = curve = None
    t0 = time.perf_counter()
    if cfg.check_top:
        check = attribution_vs_effect(spliced, check_pairs, metric, ranked, cfg.check_top, cfg.batch_size)
        effects = dict(zip(check.nodes, check.effect, strict=True))
        for node in nodes:
            node.effect = effects.get(node.key)
    seconds["check"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    if cfg.curve_sizes:
        curve = _curve(spliced, check_pairs, metric, [n for n, _ in ranked], cfg)
    seconds["curve"] = time.perf_counter() - t0
    return Circuit(nodes, edges, list(spliced.saes), scores.metric_clean, scores.metric_corrupt, scores.n_pairs,
                   cfg.method, check, curve, seconds, scores)


def _curve(spliced: SplicedModel, pairs: list[PromptPair], metric: Metric, ranked: list[Node],
           cfg: CircuitConfig) -> AblationCurve:
    """The curve at cfg.curve_sizes, plus the exact smallest size reaching 0.8 faithfulness
    (bisection inside the first grid interval that crosses 0.8) in curve.faithful_nodes."""
    ab = Ablator(spliced, pairs, metric, cfg.ablation, cfg.batch_size)
    sizes = sorted({min(n, len(ranked)) for n in cfg.curve_sizes})
    faith = [ab.faithfulness(ranked[:n]) for n in sizes]
    curve = AblationCurve(cfg.ablation, sizes, faith, [ab.completeness(ranked[:n]) for n in sizes], ab.full, ab.empty)
    hi = curve.nodes_to_reach(FAITHFUL)
    if hi:
        lo = max(n for n in sizes if n < hi)
        curve.faithful_nodes = smallest_faithful(ab, ranked, FAITHFUL, lo, hi)
    return curve


def load_spliced(model, sae_specs: dict[str, str], device: str | torch.device = "cpu") -> SplicedModel:
    """SplicedModel from {hook: SAE folder}."""
    from ...formats import load

    return SplicedModel(model, {hook: load(path, device=device) for hook, path in sae_specs.items()})
