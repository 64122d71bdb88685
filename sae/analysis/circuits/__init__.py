"""Sparse feature circuits: which SAE latents carry a model's answer from clean to corrupted
prompts, how they connect, and whether interventions agree (Marks et al. 2024).

Pipeline (one module per step): tasks (prompt pairs -> batches, metrics) -> attribution (node
scores by attribution patching or integrated gradients) -> edges (vector-Jacobian products
between consecutive spliced hooks) -> checks (patching effects, faithfulness, completeness) ->
graph (pruned nodes and edges, `find_circuit`). The figure lives in `sae.dashboard.circuit`.

Shape suffixes: N prompt pairs, T positions, D model width (d_in), F SAE latents (d_sae),
V vocabulary.
"""

from __future__ import annotations

import importlib
from typing import Any

# Imported lazily, so that `sae --help` (which reads this package's cli_snippet) stays torch-free.
_EXPORTS = {
    "ERROR": "attribution", "AttributionConfig": "attribution", "NodeScores": "attribution",
    "attribute_nodes": "attribution", "AblationCurve": "checks", "AttributionCheck": "checks",
    "ablation_curve": "checks", "attribution_vs_effect": "checks", "EdgeScores": "edges",
    "attribute_edges": "edges", "Circuit": "graph", "CircuitConfig": "graph", "find_circuit": "graph",
    "load_spliced": "graph", "METRICS": "tasks", "Metric": "tasks", "PromptPair": "tasks",
    "TaskBatch": "tasks", "load_pairs": "tasks", "logit_diff": "tasks", "resolve_pairs": "tasks",
    "sycophancy": "tasks",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["ERROR", "METRICS", "AblationCurve", "AttributionCheck", "AttributionConfig", "Circuit",
           "CircuitConfig", "EdgeScores", "Metric", "NodeScores", "PromptPair", "TaskBatch", "ablation_curve",
           "attribute_edges", "attribute_nodes", "attribution_vs_effect", "find_circuit", "load_pairs",
           "load_spliced", "logit_diff", "resolve_pairs", "sycophancy"]
