"""Node attribution: how much each SAE latent and error term carries a metric from clean to
corrupted prompts.

Nodes live at each spliced hook (see `sae.analysis.splice`): latent i of the hook's SAE, and the
hook's error term. Positions are summed, pairs averaged. For node a with clean value a_c and
corrupted value a_p, at every position, and metric m (its mean over pairs):
  1. Attribution patching (Syed et al. 2023; Marks et al. 2024, eq. 2): one forward and backward
     on the clean prompts gives  A(a) = sum_t dm/da_t (a_p,t - a_c,t),  the first-order estimate
     of the total effect of patching a to its corrupted value. The splice's pass-through mode
     makes dm/da the total derivative: later SAEs re-encode, later error terms absorb the rest.
  2. Integrated gradients (Sundararajan et al. 2017; Marks et al. eq. 3), S steps: for each hook
     in turn, its latents and error move together along a_c + alpha (a_p - a_c), midpoints
     alpha = (s + 1/2) / S, everything downstream recomputed;
     A(a) = sum_t (a_p,t - a_c,t) mean_s dm/da_t(alpha_s).
     Summed over one hook's nodes it tends to the actual effect of patching that whole hook.
Error nodes sum over the model dimension as well. Batched over pairs; the result is the mean.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..splice import SplicedModel
from .tasks import Metric, PromptPair, TaskBatch, iter_batches

ERROR = -1
"""Latent index that names a hook's error node."""

Node = tuple[str, int]
"""(hook, latent) or (hook, ERROR)."""

METHODS = ("atp", "ig")


@dataclass
class AttributionConfig:
    """How to attribute the metric to nodes."""

    method: str = "atp"
    """`atp` (attribution patching, one backward per batch) or `ig` (integrated gradients)."""
    steps: int = 8
    """Integrated-gradient steps per hook (midpoint rule); ignored for atp."""
    batch_size: int = 16
    """Prompt pairs per forward pass."""

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}.")
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}.")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}.")


@dataclass
class NodeValues:
    """Node values of one batch: hook -> latents [N, T, F] and errors [N, T, D]."""

    latents: dict[str, torch.Tensor]
    errors: dict[str, torch.Tensor]

    def get(self, node: Node) -> torch.Tensor:
        hook, i = node
        return self.errors[hook] if i == ERROR else self.latents[hook][..., i]


@dataclass
class NodeScores:
    """Mean attribution per node over the pairs (positions summed)."""

    latents: dict[str, torch.Tensor]
    """hook -> [F]."""
    errors: dict[str, float]
    """hook -> the error node's score."""
    metric_clean: float
    """Mean metric on the clean prompts (spliced model, equal to the model's)."""
    metric_corrupt: float
    """Mean metric on the corrupted prompts."""
    n_pairs: int
    method: str

    def get(self, node: Node) -> float:
        hook, i = node
        return self.errors[hook] if i == ERROR else float(self.latents[hook][i])

    def ranked(self, hooks: list[str] | None = None) -> list[tuple[Node, float]]:
        """Every node with a nonzero score, largest |score| first."""
        items: list[tuple[Node, float]] = []
        for hook in hooks or list(self.latents):
            scores_F = self.latents[hook]
            for i in scores_F.nonzero()[:, 0].tolist():
                items.append(((hook, i), float(scores_F[i])))
            items.append(((hook, ERROR), self.errors[hook]))
        return sorted(items, key=lambda kv: -abs(kv[1]))

    def to_dict(self, top: int = 50) -> dict[str, Any]:
        return {"method": self.method, "n_pairs": self.n_pairs, "metric_clean": self.metric_clean,
                "metric_corrupt": self.metric_corrupt, "errors": self.errors,
                "top": [{"hook": h, "latent": i, "score": s} for (h, i), s in self.ranked()[:top]]}


# -- forward passes ------------------------------------------------------------------------------

@torch.no_grad()
def node_values(spliced: SplicedModel, tokens_NT: torch.Tensor, batch: TaskBatch) -> tuple[NodeValues, torch.Tensor]:
    """Latents and errors of a plain spliced run, plus its logits."""
    run = spliced.run(tokens_NT, mask_NT=batch.mask_NT)
    return NodeValues(dict(run.latents), dict(run.errors)), run.logits_NTV


def _grad_run(spliced: SplicedModel, batch: TaskBatch, metric: Metric):
    """Clean run in pass-through mode: (metric [N], NodeValues of autograd nodes)."""
    run = spliced.run(batch.clean_NT, mask_NT=batch.mask_NT, grad=True, through=True)
    return metric(run.logits_NTV, batch), NodeValues(run.latents, run.errors)


def _sum_scores(grads: NodeValues, delta: NodeValues) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Per hook: sum over pairs and positions of grad * delta -> latents [F], error scalar."""
    lat = {h: (grads.latents[h] * delta.latents[h]).sum((0, 1)).detach() for h in grads.latents}
    err = {h: float((grads.errors[h] * delta.errors[h]).sum()) for h in grads.errors}
    return lat, err


def _delta(patch: NodeValues, clean: NodeValues) -> NodeValues:
    return NodeValues({h: patch.latents[h] - clean.latents[h].detach() for h in patch.latents},
                      {h: patch.errors[h] - clean.errors[h].detach() for h in patch.errors})


def atp_batch(spliced: SplicedModel, batch: TaskBatch, metric: Metric):
    """Attribution patching on one batch: summed scores and the summed clean and corrupted metric."""
    patch, logits_p = node_values(spliced, batch.corrupt_NT, batch)
    m_N, nodes = _grad_run(spliced, batch, metric)
    hooks = list(nodes.latents)
    grads = torch.autograd.grad(m_N.sum(), [nodes.latents[h] for h in hooks] + [nodes.errors[h] for h in hooks])
    g = NodeValues(dict(zip(hooks, grads[:len(hooks)], strict=True)), dict(zip(hooks, grads[len(hooks):], strict=True)))
    lat, err = _sum_scores(g, _delta(patch, nodes))
    return lat, err, float(m_N.detach().sum()), float(metric(logits_p, batch).sum())


def ig_batch(spliced: SplicedModel, batch: TaskBatch, metric: Metric, steps: int):
    """Integrated gradients on one batch, one hook at a time (see the module docstring)."""
    patch, logits_p = node_values(spliced, batch.corrupt_NT, batch)
    clean, logits = node_values(spliced, batch.clean_NT, batch)
    delta = _delta(patch, clean)
    lat, err = {}, {}
    for hook in spliced.saes:
        g_f, g_e = torch.zeros_like(clean.latents[hook]), torch.zeros_like(clean.errors[hook])
        for s in range(steps):
            alpha = (s + 0.5) / steps
            f = (clean.latents[hook] + alpha * delta.latents[hook]).requires_grad_(True)
            e = (clean.errors[hook] + alpha * delta.errors[hook]).requires_grad_(True)
            run = spliced.run(batch.clean_NT, mask_NT=batch.mask_NT, grad=True, through=True,
                              edits={hook: lambda _, f=f: f}, error_edits={hook: lambda _, e=e: e})
            df, de = torch.autograd.grad(metric(run.logits_NTV, batch).sum(), [f, e])
            g_f += df / steps
            g_e += de / steps
        lat[hook] = (g_f * delta.latents[hook]).sum((0, 1))
        err[hook] = float((g_e * delta.errors[hook]).sum())
    return lat, err, float(metric(logits, batch).sum()), float(metric(logits_p, batch).sum())


def attribute_nodes(spliced: SplicedModel, pairs: list[PromptPair], metric: Metric,
                    cfg: AttributionConfig | None = None) -> NodeScores:
    """Attribute the mean metric over `pairs` to every node (see the module docstring)."""
    cfg = cfg or AttributionConfig()
    lat_sum: dict[str, torch.Tensor] = {}
    err_sum: dict[str, float] = {}
    m_clean = m_corrupt = 0.0
    for batch in iter_batches(spliced.model.tokenizer, pairs, cfg.batch_size):
        if cfg.method == "atp":
            lat, err, m, m_p = atp_batch(spliced, batch, metric)
        else:
            lat, err, m, m_p = ig_batch(spliced, batch, metric, cfg.steps)
        m_clean += m
        m_corrupt += m_p
        for h in lat:
            lat_sum[h] = lat_sum.get(h, 0) + lat[h]
            err_sum[h] = err_sum.get(h, 0.0) + err[h]
    n = len(pairs)
    return NodeScores({h: v / n for h, v in lat_sum.items()}, {h: v / n for h, v in err_sum.items()},
                      m_clean / n, m_corrupt / n, n, cfg.method)
