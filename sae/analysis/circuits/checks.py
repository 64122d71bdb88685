"""Checks by intervention: do the attributions predict what patching and ablating actually do?

1. Node effects: patch one node (a latent at every position, or a whole error term) from its
   clean value towards its corrupted value, a_c + eps (a_p - a_c), rerun with everything
   downstream recomputed, and report (m_patched - m_clean) / eps averaged over pairs. eps = 1
   is the actual effect of patching; a small eps is the derivative attribution patching
   estimates. `attribution_vs_effect` reports the Pearson correlation over the top nodes.
2. Edge effects: shift u by eps (u_p - u_c), hold every node of the next hook at its clean value
   except d, which is recomputed: the effect through d alone, the quantity an edge estimates.
3. Faithfulness and completeness (Marks et al. 2024, sec. 3.3): with circuit C of the n top nodes,
   F(C) is the metric when every node *outside* C is ablated at every hook at once, nodes inside
   C computed normally from their (ablated) inputs; faithfulness = (F(C) - F(empty)) /
   (F(M) - F(empty)), where F(M) is the clean metric and F(empty) ablates all nodes.
   Completeness ablates C *only*: (F(M \\ C) - F(empty)) / (F(M) - F(empty)) near 0 means C is
   complete. Ablation is `patch` (a node takes its value on the corrupted prompt, the natural
   choice for prompt pairs; then F(empty) = the corrupted prompt's metric) or `mean` (its mean over
   the clean prompts' real positions, as in Marks et al.).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..splice import SplicedModel
from .attribution import ERROR, Node, NodeValues, node_values
from .edges import EMBED, _EmbedTap, embed_values
from .tasks import Metric, PromptPair, TaskBatch, iter_batches

ABLATIONS = ("patch", "mean")


def _latent_edits(spliced: SplicedModel, changes: dict[str, dict[int, torch.Tensor]]):
    """Edits that overwrite latents: changes[hook][i] = new values [N, T]."""
    def make(hook):
        def edit(f_NTF):
            f_NTF = f_NTF.clone()
            for i, values_NT in changes[hook].items():
                f_NTF[..., i] = values_NT.to(f_NTF.dtype)
            return f_NTF
        return edit
    return {h: make(h) for h in changes if h in spliced.saes}


@torch.no_grad()
def node_effect_batch(spliced: SplicedModel, batch: TaskBatch, metric: Metric, node: Node,
                      eps: float, clean: NodeValues, patch: NodeValues, m_clean_N: torch.Tensor) -> float:
    """Sum over pairs of (m(node moved by eps towards corrupted) - m(clean)) / eps."""
    hook, i = node
    target = clean.get(node) + eps * (patch.get(node) - clean.get(node))
    if i == ERROR:
        run = spliced.run(batch.clean_NT, mask_NT=batch.mask_NT, error_edits={hook: lambda _: target})
    else:
        run = spliced.run(batch.clean_NT, mask_NT=batch.mask_NT, edits=_latent_edits(spliced, {hook: {i: target}}))
    return float((metric(run.logits_NTV, batch) - m_clean_N).sum()) / eps


def node_effects(spliced: SplicedModel, pairs: list[PromptPair], metric: Metric, nodes: list[Node],
                 eps: float = 1.0, batch_size: int = 16) -> list[float]:
    """Mean effect per node of patching it (eps = 1) or nudging it (small eps); see item 1."""
    sums = [0.0] * len(nodes)
    for batch in iter_batches(spliced.model.tokenizer, pairs, batch_size):
        clean, logits = node_values(spliced, batch.clean_NT, batch)
        patch, _ = node_values(spliced, batch.corrupt_NT, batch)
        m_clean_N = metric(logits, batch)
        for k, node in enumerate(nodes):
            sums[k] += node_effect_batch(spliced, batch, metric, node, eps, clean, patch, m_clean_N)
    return [s / len(pairs) for s in sums]


@torch.no_grad()
def edge_effect_batch(spliced: SplicedModel, batch: TaskBatch, metric: Metric, edge: tuple[Node, Node],
                      eps: float) -> float:
    """Sum over pairs of the effect on m of shifting u by eps, through d alone, over eps (item 2)."""
    (up, i), (down, j) = edge
    clean, logits = node_values(spliced, batch.clean_NT, batch)
    m_clean_N = metric(logits, batch)
    hooks = list(spliced.saes)
    if not _consecutive(hooks, up, down):
        raise ValueError(f"Edge {edge} does not join consecutive spliced hooks ({', '.join(hooks)}) or the "
                         f"embeddings ({EMBED}) to the first hook; only such edges are attributed.")
    if up == EMBED:
        shift = eps * (embed_values(spliced, batch.corrupt_NT) - embed_values(spliced, batch.clean_NT))
        edits, err_edits, taps = {}, {}, [(EMBED, _EmbedTap(add_NTD=shift))]
    else:
        patch, _ = node_values(spliced, batch.corrupt_NT, batch)
        moved = clean.get((up, i)) + eps * (patch.get((up, i)) - clean.get((up, i)))
        edits = {} if i == ERROR else _latent_edits(spliced, {up: {i: moved}})
        err_edits = {up: (lambda _: moved)} if i == ERROR else {}
        taps = []
    edits[down], err_edits[down] = _hold_except(clean, down, j, edits.get(down))
    with spliced.model.bridge.hooks(fwd_hooks=taps):
        run = spliced.run(batch.clean_NT, mask_NT=batch.mask_NT, edits=edits, error_edits=err_edits)
    return float((metric(run.logits_NTV, batch) - m_clean_N).sum()) / eps


def _consecutive(hooks: list[str], up: str, down: str) -> bool:
    if down not in hooks or (up != EMBED and up not in hooks):
        return False
    return hooks.index(down) == (0 if up == EMBED else hooks.index(up) + 1)


def _hold_except(clean: NodeValues, hook: str, j: int, inner):
    """Edits at `hook` that restore clean values everywhere except node j (recomputed)."""
    f_clean, e_clean = clean.latents[hook], clean.errors[hook]

    def edit(f_NTF):
        out = f_clean.clone()
        if j != ERROR:
            out[..., j] = f_NTF[..., j]
        return inner(out) if inner is not None else out

    def err_edit(e_NTD):
        return e_NTD if j == ERROR else e_clean
    return edit, err_edit


def edge_effects(spliced: SplicedModel, pairs: list[PromptPair], metric: Metric,
                 edges: list[tuple[Node, Node]], eps: float, batch_size: int = 16) -> list[float]:
    """Mean effect per edge of a small shift of its upstream node through its downstream node."""
    sums = [0.0] * len(edges)
    for batch in iter_batches(spliced.model.tokenizer, pairs, batch_size):
        for k, edge in enumerate(edges):
            sums[k] += edge_effect_batch(spliced, batch, metric, edge, eps)
    return [s / len(pairs) for s in sums]


def pearson(a: list[float], b: list[float]) -> float:
    x, y = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    x, y = x - x.mean(), y - y.mean()
    return float((x * y).sum() / (x.norm() * y.norm()).clamp_min(1e-30))


@dataclass
class AttributionCheck:
    """Attribution against the actual effect of patching each of the top nodes."""

    nodes: list[Node]
    attribution: list[float]
    effect: list[float]
    """Mean over pairs of m(node patched to its corrupted value) - m(clean)."""
    pearson: float
    pearson_latents: float
    """Pearson r over the latents only: error nodes carry large effects and can dominate r."""
    sign_agreement: float
    """Fraction of nodes where attribution and effect have the same sign."""


def attribution_vs_effect(spliced: SplicedModel, pairs: list[PromptPair], metric: Metric,
                          ranked: list[tuple[Node, float]], top: int = 50, batch_size: int = 16) -> AttributionCheck:
    nodes = [n for n, _ in ranked[:top]]
    attr = [s for _, s in ranked[:top]]
    eff = node_effects(spliced, pairs, metric, nodes, eps=1.0, batch_size=batch_size)
    agree = sum((a > 0) == (e > 0) for a, e in zip(attr, eff, strict=True)) / max(len(nodes), 1)
    latents = [k for k, (_, i) in enumerate(nodes) if i != ERROR]
    r_latents = pearson([attr[k] for k in latents], [eff[k] for k in latents])
    return AttributionCheck(nodes, attr, eff, pearson(attr, eff), r_latents, agree)


# -- faithfulness and completeness ---------------------------------------------------------------

@dataclass
class AblationCurve:
    """Faithfulness and completeness against the number of nodes in the circuit."""

    ablation: str
    sizes: list[int]
    faithfulness: list[float]
    completeness: list[float]
    metric_full: float
    """F(M): mean metric of the unablated (spliced) model."""
    metric_empty: float
    """F(empty): every node ablated."""
    faithful_nodes: int | None = None
    """Smallest circuit size reaching 0.8 faithfulness, found by bisection (None: not searched or
    never reached)."""

    def nodes_to_reach(self, level: float = 0.8) -> int | None:
        """Smallest circuit size in the curve with faithfulness >= level (None if never)."""
        return next((n for n, f in zip(self.sizes, self.faithfulness, strict=True) if f >= level), None)


@torch.no_grad()
def mean_values(spliced: SplicedModel, pairs: list[PromptPair], batch_size: int = 16) -> NodeValues:
    """Mean latents [F] and errors [D] per hook over the clean prompts' real positions."""
    lat: dict[str, torch.Tensor] = {}
    err: dict[str, torch.Tensor] = {}
    count = 0
    for batch in iter_batches(spliced.model.tokenizer, pairs, batch_size):
        vals, _ = node_values(spliced, batch.clean_NT, batch)
        mask = batch.mask_NT.to(next(iter(vals.latents.values())).device)
        for h in vals.latents:
            lat[h] = lat.get(h, 0) + vals.latents[h][mask].sum(0)
            err[h] = err.get(h, 0) + vals.errors[h][mask].sum(0)
        count += int(mask.sum())
    return NodeValues({h: v / count for h, v in lat.items()}, {h: v / count for h, v in err.items()})


def _ablated_run(spliced: SplicedModel, batch: TaskBatch, ablate_F: dict[str, torch.Tensor],
                 ablate_err: dict[str, bool], values: NodeValues) -> torch.Tensor:
    """Logits with, at each hook, latents where ablate_F[hook] is True and the error node where
    ablate_err[hook] is True replaced by `values` (broadcast against [N, T, ...])."""
    def lat_edit(h):
        return lambda f: torch.where(ablate_F[h].to(f.device), values.latents[h].to(f.dtype), f)

    def err_edit(h):
        return lambda e: values.errors[h].to(e.dtype).expand_as(e) if ablate_err[h] else e
    hooks = list(spliced.saes)
    return spliced.run(batch.clean_NT, mask_NT=batch.mask_NT, edits={h: lat_edit(h) for h in hooks},
                       error_edits={h: err_edit(h) for h in hooks}).logits_NTV


def _masks(spliced: SplicedModel, circuit: list[Node], inside: bool):
    """Ablation masks: ablate nodes outside the circuit (inside=False) or inside it (True)."""
    in_F = {h: torch.zeros(s.d_sae, dtype=torch.bool) for h, s in spliced.saes.items()}
    in_err = dict.fromkeys(spliced.saes, False)
    for h, i in circuit:
        if i == ERROR:
            in_err[h] = True
        else:
            in_F[h][i] = True
    if inside:
        return in_F, in_err
    return {h: ~m for h, m in in_F.items()}, {h: not v for h, v in in_err.items()}


class Ablator:
    """Scores circuits by ablation on a fixed set of pairs; the batches, the ablation values,
    F(M) and F(empty) are computed once."""

    @torch.no_grad()
    def __init__(self, spliced: SplicedModel, pairs: list[PromptPair], metric: Metric, ablation: str = "patch",
                 batch_size: int = 16):
        if ablation not in ABLATIONS:
            raise ValueError(f"ablation must be one of {', '.join(ABLATIONS)}, got {ablation!r}.")
        self.spliced, self.metric, self.ablation, self.n = spliced, metric, ablation, len(pairs)
        means = mean_values(spliced, pairs, batch_size) if ablation == "mean" else None
        self.batches = []
        full = 0.0
        for batch in iter_batches(spliced.model.tokenizer, pairs, batch_size):
            values = node_values(spliced, batch.corrupt_NT, batch)[0] if means is None else means
            self.batches.append((batch, values))
            full += float(metric(node_values(spliced, batch.clean_NT, batch)[1], batch).sum())
        self.full = full / self.n
        self.empty = self.metric_with([], inside=False)
        if abs(self.full - self.empty) < 1e-12:
            raise ValueError("Ablating every node leaves the metric unchanged, so faithfulness is undefined; "
                             "check that the corrupted prompts change the answer.")

    @torch.no_grad()
    def metric_with(self, circuit: list[Node], inside: bool) -> float:
        """Mean metric with the nodes outside `circuit` ablated (inside=False) or those in it (True)."""
        total = 0.0
        for batch, values in self.batches:
            logits = _ablated_run(self.spliced, batch, *_masks(self.spliced, circuit, inside), values)
            total += float(self.metric(logits, batch).sum())
        return total / self.n

    def normalised(self, value: float) -> float:
        return (value - self.empty) / (self.full - self.empty)

    def faithfulness(self, circuit: list[Node]) -> float:
        return self.normalised(self.metric_with(circuit, inside=False))

    def completeness(self, circuit: list[Node]) -> float:
        return self.normalised(self.metric_with(circuit, inside=True))


def ablation_curve(spliced: SplicedModel, pairs: list[PromptPair], metric: Metric, ranked: list[Node],
                   sizes: list[int], ablation: str = "patch", batch_size: int = 16) -> AblationCurve:
    """Faithfulness and completeness of the top-n circuits for n in `sizes` (see item 3)."""
    ab = Ablator(spliced, pairs, metric, ablation, batch_size)
    return AblationCurve(ablation, list(sizes), [ab.faithfulness(ranked[:n]) for n in sizes],
                         [ab.completeness(ranked[:n]) for n in sizes], ab.full, ab.empty)


def smallest_faithful(ablator: Ablator, ranked: list[Node], level: float = 0.8, lo: int = 0,
                      hi: int | None = None) -> int | None:
    """Smallest n with faithfulness(top n) >= level, by bisection between lo and hi (default: all
    nodes). Assumes faithfulness grows with n between them (check against the curve); None when
    even `hi` nodes fall short."""
    hi = len(ranked) if hi is None else hi
    if ablator.faithfulness(ranked[:hi]) < level:
        return None
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if ablator.faithfulness(ranked[:mid]) >= level:
            hi = mid
        else:
            lo = mid
    return hi
