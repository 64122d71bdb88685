"""The behaviour pipeline: metric, ranking, probes, causal checks and labels, in one report.

`run_behaviour(model, sae, dataset, cfg)`:
  1. Subsample (optional) and split the items into train and held-out test (by item, seeded).
  2. Measure the clean model's behaviour on every item (metrics.py), reported first.
  3. Pool activations and SAE latents per side on both splits (ranking.py, step 1).
  4. On train: gradient x activation attribution of the metric through the spliced SAE, then
     per-latent AUROC, difference of means, Cohen's d, p-values with BH-FDR, and the order.
  5. On test: dense probe, sparse probes on the top-k latents, the best latent alone.
  6. Causal checks with the error term kept (causal.py): steering curves of the top latents
     with their CE cost on ordinary text, and greedy removal chosen on train items and
     re-measured on test items.
  7. Deterministic labels of the reported latents (sae.analysis.labels).
Data with no model metric (labelled statements) stops after step 5 and 7.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from ..._bundled import bundled_path
from ...lm import LoadedModel
from ...model import SparseAutoencoder
from ..labels import LabelConfig, label_latents
from ..splice import SplicedModel
from .causal import (
    CausalConfig,
    RemovalResult,
    SteeringCurve,
    ce_blocks,
    ce_loss,
    edited_logits,
    greedy_removal,
    removal_candidates,
    steering_curve,
    typical_activation,
)
from .datasets import BehaviourDataset
from .metrics import BehaviourScore, EncodedSet, MetricConfig, encode, score
from .ranking import LatentRanking, SideFeatures, attribution, probe_baselines, rank_latents, side_features

DEFAULT_CORPUS = str(bundled_path("wikitext-2-valid.txt"))  # shipped in the package (sae/_bundled)


@dataclass
class BehaviourConfig:
    """Which items, how many latents, and the settings of each stage."""

    hook: str | None = None
    """Hook of the SAE (default: the SAE's own cfg.hook_name)."""
    n_items: int | None = None
    """Use a seeded random subset of this many items (None: all)."""
    test_frac: float = 0.4
    """Fraction of items held out for probes and causal checks."""
    seed: int = 0
    """Seed of the subset and the split."""
    fdr: float = 0.05
    """Benjamini-Hochberg false discovery rate over latents."""
    n_top: int = 10
    """Latents reported (and labelled)."""
    probe_ks: tuple[int, ...] = (1, 4, 16)
    """Sizes of the sparse probes."""
    n_attr: int | None = None
    """Train items used for attribution (None: all)."""
    n_select: int | None = None
    """Train items the greedy removal is chosen on (None: all)."""
    n_causal: int | None = None
    """Held-out items steering and removal are measured on (None: all)."""
    corpus: str = DEFAULT_CORPUS
    """Ordinary text for the CE cost and the label contexts."""
    metric: MetricConfig = field(default_factory=MetricConfig)
    causal: CausalConfig = field(default_factory=CausalConfig)
    labels: LabelConfig = field(default_factory=LabelConfig)

    def __post_init__(self) -> None:
        if not 0 < self.test_frac < 1:
            raise ValueError(f"BehaviourConfig.test_frac must be in (0, 1), got {self.test_frac}.")
        if not 0 < self.fdr < 1:
            raise ValueError(f"BehaviourConfig.fdr must be in (0, 1), got {self.fdr}.")
        if self.n_top < 1 or not self.probe_ks or min(self.probe_ks) < 1:
            raise ValueError("BehaviourConfig.n_top and every probe_ks entry must be at least 1.")
        for name in ("n_items", "n_attr", "n_select", "n_causal"):
            value = getattr(self, name)
            if value is not None and value < 2:
                raise ValueError(f"BehaviourConfig.{name} must be at least 2 or None, got {value}.")


@dataclass
class BehaviourReport:
    """Everything `run_behaviour` measured (see the module docstring)."""

    meta: dict[str, Any]
    clean: dict[str, float]
    """Clean-model metric summary over all items used."""
    clean_test: dict[str, float]
    ranking: LatentRanking
    top: list[dict[str, Any]]
    """Per reported latent: train statistics, held-out AUROC, label."""
    probes: dict[str, Any]
    steering: list[SteeringCurve]
    removal: RemovalResult | None
    distributions: dict[int, dict[str, list[float]]]
    """latent -> held-out pooled activations on the behaviour and control sides."""
    labels: list[dict[str, Any]]
    timings: dict[str, float]

    def to_dict(self, per_latent: bool = False) -> dict[str, Any]:
        """JSON-ready; `per_latent` adds AUROC, attribution and q of every latent."""
        out = {"meta": self.meta, "clean": self.clean, "clean_test": self.clean_test,
               "ranking": {"test": self.ranking.test, "fdr": self.ranking.fdr,
                           "n_significant": int(self.ranking.significant_F.sum())},
               "top_latents": self.top, "probes": self.probes,
               "steering": [c.to_dict() for c in self.steering],
               "removal": self.removal.to_dict() if self.removal else None,
               "labels": self.labels, "timings": self.timings}
        if per_latent:
            out["per_latent"] = {"auroc": self.ranking.auroc_F.tolist(), "q": self.ranking.q_F.tolist(),
                                 "cohen_d": self.ranking.cohen_d_F.tolist(),
                                 "attribution": (self.ranking.attribution_F.tolist()
                                                 if self.ranking.attribution_F is not None else None)}
            out["distributions"] = {str(k): v for k, v in self.distributions.items()}
        return out


class _Clock:
    def __init__(self) -> None:
        self.times: dict[str, float] = {}
        self._t = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.times[name] = round(now - self._t, 3)
        self._t = now


def _first(n: int | None, idx: list[int]) -> list[int]:
    return idx if n is None else idx[:n]


def run_behaviour(model: LoadedModel, sae: SparseAutoencoder, dataset: BehaviourDataset,
                  cfg: BehaviourConfig | None = None, progress: bool = False) -> BehaviourReport:
    """Steps 1-7 of the module docstring."""
    cfg = cfg or BehaviourConfig()
    hook = cfg.hook or sae.cfg.hook_name
    if not hook:
        raise ValueError("The SAE does not name its hook; pass BehaviourConfig(hook=...) or --hook, "
                         "e.g. blocks.15.hook_resid_post.")
    clock = _Clock()
    sae = sae.to(model.device).eval()
    spliced = SplicedModel(model, {hook: sae})
    train_ds, test_ds = dataset.subset(cfg.n_items, cfg.seed).split(cfg.test_frac, cfg.seed)
    train, test = (encode(d, model.tokenizer, cfg.metric) for d in (train_ds, test_ds))
    has_metric = train.kind != "none"
    batch = cfg.metric.batch

    clean = clean_test = {}
    if has_metric:
        clean_fn = edited_logits(spliced, hook)
        s_train, s_test = score(clean_fn, train, batch), score(clean_fn, test, batch)
        clean_test = s_test.summary()
        clean = BehaviourScore(s_test.kind, torch.cat([s_train.values, s_test.values]),
                               torch.cat([s_train.labels, s_test.labels])).summary()
    clock.lap("clean_metric")
    f_train = side_features(model, sae, hook, train, batch)
    f_test = side_features(model, sae, hook, test, batch)
    clock.lap("features")
    attr_F = None
    if has_metric:
        attr_F = attribution(spliced, hook, train, _first(cfg.n_attr, train.behaviour_idx()), batch)
    clock.lap("attribution")
    ranking = rank_latents(f_train, attr_F, cfg.fdr)
    probes = probe_baselines(f_train, f_test, ranking, tuple(k for k in cfg.probe_ks if k <= sae.d_sae), cfg.n_top)
    clock.lap("ranking_probes")
    steering, removal = [], None
    if has_metric:
        steering, removal = _causal(spliced, hook, model, cfg, train, test, f_train, ranking)
    clock.lap("causal")
    top_ids = ranking.order[:cfg.n_top].tolist()
    labels = _labels(sae, model, cfg, top_ids, ranking, dataset.name)
    clock.lap("labels")
    meta = {"dataset": dataset.name, "kind": train.kind, "hook": hook, "model": model.name,
            "d_sae": sae.d_sae, "n_train": len(train.items), "n_test": len(test.items),
            "n_train_sides": int(f_train.y_N.numel()), "n_test_sides": int(f_test.y_N.numel())}
    top = [ranking.row(lat) | {"test_auroc": probes.top_latents_test_auroc.get(lat), "label": lab["label"]}
           for lat, lab in zip(top_ids, labels, strict=True)]
    return BehaviourReport(meta, clean, clean_test, ranking, top, probes.to_dict(), steering, removal,
                           _distributions(f_test, top_ids), labels, clock.times)


def _causal(spliced: SplicedModel, hook: str, model: LoadedModel, cfg: BehaviourConfig, train: EncodedSet,
            test: EncodedSet, f_train: SideFeatures,
            ranking: LatentRanking) -> tuple[list[SteeringCurve], RemovalResult | None]:
    c = cfg.causal
    blocks = ce_blocks(cfg.corpus, model.tokenizer, c.ce_tokens, c.ce_context)
    base_ce = ce_loss(edited_logits(spliced, hook), blocks, c.batch) if blocks is not None else None
    test_idx = _first(cfg.n_causal, test.behaviour_idx())
    steering = []
    for lat in ranking.order[:c.n_steer].tolist():
        unit = typical_activation(f_train.fire_mean_F, lat)
        steering.append(steering_curve(spliced, hook, test, lat, unit, c, blocks, base_ce, test_idx))
    removal = None
    if c.removal_steps and c.removal_candidates:
        cands = removal_candidates(ranking.attribution_F, ranking.order, c.removal_candidates)
        select = _first(cfg.n_select, train.behaviour_idx())
        removal = greedy_removal(spliced, hook, train, cands, c, blocks, select, test.subset(test_idx))
    return steering, removal


def _labels(sae: SparseAutoencoder, model: LoadedModel, cfg: BehaviourConfig, top_ids: list[int],
            ranking: LatentRanking, name: str) -> list[dict[str, Any]]:
    assoc = {lat: f"{name}{'+' if float(ranking.auroc_F[lat]) >= 0.5 else '-'} "
                  f"(AUROC {float(ranking.auroc_F[lat]):.2f}, d {float(ranking.cohen_d_F[lat]):+.2f})"
             for lat in top_ids}
    return [lab.to_dict() for lab in label_latents(sae, model, top_ids, cfg.corpus, cfg.labels, assoc)]


def _distributions(feats: SideFeatures, latents: list[int]) -> dict[int, dict[str, list[float]]]:
    pos = feats.y_N == 1
    return {lat: {"behaviour": feats.latents_NF[pos, lat].tolist(), "control": feats.latents_NF[~pos, lat].tolist()}
            for lat in latents}
