"""Edges between nodes of consecutive spliced hooks, by vector-Jacobian products.

Each spliced resid_post hook replaces the whole residual stream, so every path from an earlier
node to the metric crosses every later hook: the graph needs only edges between consecutive
hooks, from the token embeddings into the first hook, and from the last hook into the metric.
For an upstream node u and a downstream node d (Marks et al. 2024, eq. 5, summed over positions):
  1. one clean forward in pass-through mode, and dm/dd at every position (one backward);
  2. per kept downstream node d, one vector-Jacobian product v = d(sum_t dm/dd_t d_t)/du, taken
     back only as far as the upstream hook;
  3. edge(u -> d) = sum_s v_s (u_p,s - u_c,s), the first-order effect on m of patching u that
     flows through d alone (all other downstream nodes held at their clean values).
Into the metric, edge(d -> m) = the attribution-patching score of d. Summed over all downstream
nodes of a hook (latents and error), the edges out of u give back u's node attribution exactly
(chain rule), which the tests check. Step 2 runs only for the top downstream nodes, so the cost
is (kept nodes) x (a partial backward), batched over pairs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..splice import SplicedModel
from .attribution import ERROR, Node, NodeValues, node_values
from .tasks import Metric, PromptPair, TaskBatch, iter_batches

EMBED = "hook_embed"
"""Name of the embedding node (the token embeddings, one node for all of them)."""
METRIC = "metric"
"""Name of the metric node."""


@dataclass
class EdgeScores:
    """Mean edge attribution over pairs: (upstream node, downstream node) -> score."""

    scores: dict[tuple[Node, Node], float]
    n_pairs: int

    def ranked(self) -> list[tuple[tuple[Node, Node], float]]:
        return sorted(self.scores.items(), key=lambda kv: -abs(kv[1]))


def _layers(spliced: SplicedModel) -> list[str]:
    return list(spliced.saes)


class _EmbedTap:
    """A forward hook that records the embedding output (optionally shifted by `add_NTD`) as an
    autograd leaf."""

    def __init__(self, add_NTD: torch.Tensor | None = None, leaf: bool = False):
        self.add_NTD, self.leaf, self.value = add_NTD, leaf, None

    def __call__(self, x_NTD: torch.Tensor, hook=None) -> torch.Tensor:
        if self.leaf:
            x_NTD = x_NTD.detach().requires_grad_(True)
            self.value = x_NTD
        if self.add_NTD is not None:
            x_NTD = x_NTD + self.add_NTD.to(x_NTD.dtype)
        if not self.leaf:
            self.value = x_NTD.detach()
        return x_NTD


@torch.no_grad()
def embed_values(spliced: SplicedModel, tokens_NT: torch.Tensor) -> torch.Tensor:
    """The token embeddings [N, T, D] as the first hook sees them."""
    tap = _EmbedTap()
    with spliced.model.bridge.hooks(fwd_hooks=[(EMBED, tap)]):
        spliced.model.bridge(tokens_NT.to(spliced.model.device))
    return tap.value


def _vjp_scores(out: torch.Tensor, up: list[torch.Tensor], delta: list[torch.Tensor]) -> list[torch.Tensor]:
    """For each upstream tensor [N, T, ...]: sum over pairs and positions of VJP * delta (per
    latent for [N, T, F], one number for an error or embedding [N, T, D])."""
    grads = torch.autograd.grad(out, up, retain_graph=True, allow_unused=True)
    res = []
    for g, d, u in zip(grads, delta, up, strict=True):
        g = torch.zeros_like(u) if g is None else g
        res.append((g * d).sum((0, 1)))
    return res


def edges_batch(spliced: SplicedModel, batch: TaskBatch, metric: Metric,
                keep: dict[str, list[int]]) -> dict[tuple[Node, Node], float]:
    """Summed (over pairs) edge scores on one batch into the kept nodes of each hook.

    `keep[hook]` lists the downstream latents to expand (the error node is always expanded);
    edges are returned from every upstream node with a nonzero score.
    """
    hooks = _layers(spliced)
    patch, _ = node_values(spliced, batch.corrupt_NT, batch)
    d_embed_NTD = embed_values(spliced, batch.corrupt_NT) - embed_values(spliced, batch.clean_NT)
    tap = _EmbedTap(leaf=True)
    with spliced.model.bridge.hooks(fwd_hooks=[(EMBED, tap)]):
        run = spliced.run(batch.clean_NT, mask_NT=batch.mask_NT, grad=True, through=True)
    nodes = NodeValues(run.latents, run.errors)
    m = metric(run.logits_NTV, batch).sum()
    flat = [nodes.latents[h] for h in hooks] + [nodes.errors[h] for h in hooks]
    g_flat = torch.autograd.grad(m, flat, retain_graph=True)
    grads = NodeValues(dict(zip(hooks, g_flat[:len(hooks)], strict=True)),
                       dict(zip(hooks, g_flat[len(hooks):], strict=True)))
    out: dict[tuple[Node, Node], float] = {}
    for k, down in enumerate(hooks):
        if k == 0:
            up_names, up_tensors, up_delta = [EMBED], [tap.value], [d_embed_NTD]
        else:
            up = hooks[k - 1]
            up_names = [up, up]
            up_tensors = [nodes.latents[up], nodes.errors[up]]
            up_delta = [patch.latents[up] - nodes.latents[up].detach(), patch.errors[up] - nodes.errors[up].detach()]
        for i in [*keep.get(down, []), ERROR]:
            d_node = (down, i)
            target = (grads.get(d_node).detach() * nodes.get(d_node)).sum()
            for j, (name, score) in enumerate(zip(up_names, _vjp_scores(target, up_tensors, up_delta), strict=True)):
                _collect(out, name, j, score, d_node)
    return out


def _collect(out: dict, name: str, j: int, score: torch.Tensor, d_node: Node) -> None:
    """Score [F] for latents (j == 0 and not the embedding), else [D] summed to one number."""
    if name != EMBED and j == 0:
        for i in score.nonzero()[:, 0].tolist():
            out[((name, i), d_node)] = float(score[i])
    else:
        out[((name, ERROR if name != EMBED else 0), d_node)] = float(score.sum())


def attribute_edges(spliced: SplicedModel, pairs: list[PromptPair], metric: Metric,
                    keep: dict[str, list[int]], batch_size: int = 16) -> EdgeScores:
    """Mean edge scores over `pairs` into the kept downstream nodes (see the module docstring)."""
    total: dict[tuple[Node, Node], float] = {}
    for batch in iter_batches(spliced.model.tokenizer, pairs, batch_size):
        for key, value in edges_batch(spliced, batch, metric, keep).items():
            total[key] = total.get(key, 0.0) + value
    n = len(pairs)
    return EdgeScores({k: v / n for k, v in total.items()}, n)
