"""Rank SAE latents by how they relate to a behaviour, on a train split, with probe baselines.

1. Features: the activations at the SAE's hook, pooled per side. Pairs give two sides per
   item: prompt + matching (y = 1) and prompt + not matching (y = 0), read at the answer token
   (choice) or averaged over the completion tokens (longer completions); this is the contrast
   of contrastive activation addition (Panickssery et al. 2023). Labelled prompts give one
   side, read at the last prompt token (Arditi et al. 2024), y = label. Latents are encoded per
   token, then pooled.
2. Per latent: difference of means and Cohen's d (pooled standard deviation); AUROC = the
   Mann-Whitney U statistic / (n1 n0), ties at mid-rank. p-values: for pairs, the Wilcoxon
   signed-rank test on the per-item differences (zero differences dropped, tie-corrected normal
   approximation), since the two sides of an item are not independent; for labelled data, the
   tie-corrected normal approximation of Mann-Whitney. Benjamini-Hochberg (1995) adjusts the
   p-values over all latents that vary (false discovery rate q).
3. Attribution: gradient x activation of the behaviour metric through the SAE spliced in with
   its error term (Marks et al. 2024; Syed et al. 2023): for each item, sum over positions of
   f * d metric / d f, averaged over items. It is the first-order estimate of how much the
   metric falls when the latent is zero-ablated.
4. Order: latents significant after BH first, then by |AUROC - 0.5|, then by |Cohen's d|.
5. Baselines, all scored on the held-out split: a dense logistic probe on the raw pooled
   activations, sparse probes on the top-k latents of the train order, and the best latent
   alone (oriented by its train AUROC). Probes are L2-regularised logistic regression (LBFGS),
   inputs standardised on train, the L2 strength picked by grouped 3-fold cross-validation on
   train (the two sides of an item stay in one fold).

Local suffixes: N sides, P pairs (items), F latents, D model width, K probe inputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ...activations import Harvester
from ...lm import LoadedModel
from ...model import SparseAutoencoder
from ..splice import SplicedModel
from .metrics import EncodedSet, metric_batches, pad_rows, values_from_logits

L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)


@dataclass
class SideFeatures:
    """Pooled activations and latents of every side (step 1 of the module docstring)."""

    acts_ND: torch.Tensor
    """Raw activations at the hook, pooled per side."""
    latents_NF: torch.Tensor
    """SAE latents, encoded per token and pooled the same way."""
    y_N: torch.Tensor
    """1 for the behaviour side (matching completion / label 1), else 0."""
    group_N: torch.Tensor
    """Item index of each side (the two sides of a pair share it)."""
    paired: bool
    fire_mean_F: torch.Tensor
    """Mean per-token activation of each latent over the pooled positions of the behaviour
    sides where it fires (0 where it never does): its typical firing strength, unlike the
    pooled values, which average in the tokens where it is silent."""


def _sides(enc: EncodedSet) -> list[tuple[list[int], int, int, int]]:
    """(token ids, first pooled position, label, item) for every side."""
    out = []
    for i, it in enumerate(enc.items):
        if enc.is_pair:
            for comp, y in zip(it.completions, (1, 0), strict=True):
                seq = it.prompt + comp
                first = len(seq) - 1 if enc.kind == "choice" else len(it.prompt)
                out.append((seq, first, y, i))
        else:
            out.append((it.prompt, len(it.prompt) - 1, it.label, i))
    return out


@torch.no_grad()
def side_features(model: LoadedModel, sae: SparseAutoencoder, hook: str, enc: EncodedSet,
                  batch: int = 8) -> SideFeatures:
    """Step 1 of the module docstring for every item of `enc`."""
    harvester = Harvester(model, [hook])
    sides = _sides(enc)
    acts, lats = [], []
    fire_sum_F = torch.zeros(sae.d_sae, dtype=torch.float64)
    fire_n_F = torch.zeros(sae.d_sae, dtype=torch.float64)
    for b0 in range(0, len(sides), batch):
        chunk = sides[b0:b0 + batch]
        tokens_NT, _ = pad_rows([s[0] for s in chunk], enc.pad_id)
        x_NTD = harvester.run(tokens_NT.to(model.device))[hook].float()
        for r, (seq, first, y, _) in enumerate(chunk):
            x_PD = x_NTD[r, first:len(seq)].flatten(1).to(sae.W_enc.device)
            lat_PF = sae.encode(x_PD).cpu()
            acts.append(x_PD.mean(0).cpu())
            lats.append(lat_PF.mean(0))
            if y == 1:
                fire_sum_F += lat_PF.sum(0).double()
                fire_n_F += (lat_PF > 0).sum(0).double()
    return SideFeatures(torch.stack(acts), torch.stack(lats), torch.tensor([s[2] for s in sides]),
                        torch.tensor([s[3] for s in sides]), enc.is_pair,
                        (fire_sum_F / fire_n_F.clamp_min(1)).float())


# -- statistics ------------------------------------------------------------------------------------


def midranks(x_NF: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-column ranks (1-based, ties share their mid-rank) [N, F] and the tie term
    sum over tie groups of (t^3 - t) [F]."""
    xt_FN = x_NF.t().contiguous().double()
    sorted_FN = xt_FN.sort(dim=1).values
    low = torch.searchsorted(sorted_FN, xt_FN, right=False)
    high = torch.searchsorted(sorted_FN, xt_FN, right=True)
    ranks_FN = (low + high + 1).double() / 2
    size_FN = (high - low).double()
    # every member of a tie group of size t adds t^2 - 1, so a group adds t(t^2 - 1) = t^3 - t
    return ranks_FN.t(), (size_FN.pow(2) - 1).sum(1)


def _normal_two_sided(z: torch.Tensor) -> torch.Tensor:
    return torch.special.erfc(z.abs() / math.sqrt(2.0))


def mann_whitney(x_NF: torch.Tensor, y_N: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """AUROC [F] of each column for classes y (1 positive) and the two-sided p-value [F] of
    the tie-corrected normal approximation (1 where a column is constant)."""
    pos = y_N.bool()
    n1, n0 = int(pos.sum()), int((~pos).sum())
    if n1 == 0 or n0 == 0:
        raise ValueError(f"AUROC needs both classes; got {n1} positive and {n0} negative examples.")
    ranks_NF, ties_F = midranks(x_NF)
    n = n1 + n0
    u_F = ranks_NF[pos].sum(0) - n1 * (n1 + 1) / 2
    var_F = n1 * n0 / 12.0 * ((n + 1) - ties_F / (n * (n - 1)))
    z_F = (u_F - n1 * n0 / 2) / var_F.clamp_min(1e-30).sqrt()
    p_F = torch.where(var_F > 1e-12, _normal_two_sided(z_F), torch.ones_like(z_F))
    return (u_F / (n1 * n0)).float(), p_F


def wilcoxon_signed_rank(d_PF: torch.Tensor) -> torch.Tensor:
    """Two-sided p-value [F] of the Wilcoxon signed-rank test on paired differences d [P, F]
    (zeros dropped, tie-corrected normal approximation; 1 where all differences are zero)."""
    d = d_PF.double()
    nonzero = d != 0
    n_F = nonzero.sum(0).double()
    ranks_PF, ties_F = midranks(d.abs())
    n_zero_F = (~nonzero).sum(0).double()
    # zeros take the lowest ranks; removing them shifts the others down by their count and
    # removes their own tie group (size n_zero) from the tie term
    ranks_PF = ranks_PF - n_zero_F
    ties_F = ties_F - (n_zero_F.pow(3) - n_zero_F)
    w_plus_F = (ranks_PF * (d > 0)).sum(0)
    mean_F = n_F * (n_F + 1) / 4
    var_F = n_F * (n_F + 1) * (2 * n_F + 1) / 24 - ties_F / 48
    z_F = (w_plus_F - mean_F) / var_F.clamp_min(1e-30).sqrt()
    return torch.where(var_F > 1e-12, _normal_two_sided(z_F), torch.ones_like(z_F))


def benjamini_hochberg(p_F: torch.Tensor, q: float = 0.05) -> tuple[torch.Tensor, torch.Tensor]:
    """BH-adjusted p-values [F] and the mask of discoveries at false discovery rate q."""
    m = p_F.numel()
    order = p_F.argsort()
    adj = p_F[order].double() * m / torch.arange(1, m + 1, dtype=torch.float64)
    adj = adj.flip(0).cummin(0).values.flip(0).clamp(max=1.0)
    out = torch.empty_like(adj)
    out[order] = adj
    return out, out <= q


def cohen_d(x_NF: torch.Tensor, y_N: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Difference of means (class 1 - class 0) [F] and Cohen's d with the pooled std [F]."""
    pos = y_N.bool()
    a, b = x_NF[pos].double(), x_NF[~pos].double()
    diff = a.mean(0) - b.mean(0)
    n1, n0 = a.shape[0], b.shape[0]
    pooled = ((n1 - 1) * a.var(0, unbiased=True) + (n0 - 1) * b.var(0, unbiased=True)) / max(1, n1 + n0 - 2)
    d = torch.where(pooled > 1e-20, diff / pooled.clamp_min(1e-20).sqrt(), torch.zeros_like(diff))
    return diff.float(), d.float()


# -- ranking -----------------------------------------------------------------------------------


@dataclass
class LatentRanking:
    """Per-latent statistics on the train split (steps 2-4 of the module docstring)."""

    auroc_F: torch.Tensor
    p_F: torch.Tensor
    q_F: torch.Tensor
    """Benjamini-Hochberg adjusted p-values."""
    significant_F: torch.Tensor
    mean_diff_F: torch.Tensor
    cohen_d_F: torch.Tensor
    attribution_F: torch.Tensor | None
    """Mean gradient x activation of the metric (None when the data has no model metric)."""
    order: torch.Tensor
    """Latent ids, best first."""
    test: str
    fdr: float

    def row(self, latent: int) -> dict[str, float]:
        """The numbers of one latent, JSON-ready."""
        out = {"latent": latent, "auroc": float(self.auroc_F[latent]), "p": float(self.p_F[latent]),
               "q": float(self.q_F[latent]), "significant": bool(self.significant_F[latent]),
               "mean_diff": float(self.mean_diff_F[latent]), "cohen_d": float(self.cohen_d_F[latent])}
        if self.attribution_F is not None:
            out["attribution"] = float(self.attribution_F[latent])
        return out

    def by_attribution(self) -> torch.Tensor:
        """Latent ids by attribution, largest (most behaviour-supporting) first."""
        if self.attribution_F is None:
            raise ValueError("no attribution was computed (the data has no model metric).")
        return self.attribution_F.argsort(descending=True, stable=True)


def rank_latents(feats: SideFeatures, attribution_F: torch.Tensor | None = None,
                 fdr: float = 0.05) -> LatentRanking:
    """Steps 2 and 4 of the module docstring on train features."""
    x_NF, y_N = feats.latents_NF, feats.y_N
    auroc_F, p_mw = mann_whitney(x_NF, y_N)
    if feats.paired:
        d_PF = _paired_differences(feats)
        p_F, test = wilcoxon_signed_rank(d_PF), "wilcoxon signed-rank (paired sides)"
    else:
        p_F, test = p_mw, "mann-whitney U"
    varies = x_NF.amax(0) > x_NF.amin(0)
    q_F = torch.ones_like(p_F)
    sig_F = torch.zeros_like(varies)
    if varies.any():
        q_F[varies], sig_F[varies] = benjamini_hochberg(p_F[varies], fdr)
    diff_F, d_F = cohen_d(x_NF, y_N)
    order = _order(sig_F, (auroc_F - 0.5).abs(), d_F.abs())
    return LatentRanking(auroc_F, p_F.float(), q_F.float(), sig_F, diff_F, d_F, attribution_F, order, test, fdr)


def _paired_differences(feats: SideFeatures) -> torch.Tensor:
    pos = feats.y_N == 1
    g_pos, g_neg = feats.group_N[pos], feats.group_N[~pos]
    assert torch.equal(g_pos, g_neg), "pair sides must come in item order"
    return feats.latents_NF[pos] - feats.latents_NF[~pos]


def _order(*keys_desc: torch.Tensor) -> torch.Tensor:
    """Indices sorted by the keys, all descending, the first key most significant."""
    order = torch.arange(keys_desc[0].numel())
    for key in reversed(keys_desc):
        order = order[key[order].float().argsort(descending=True, stable=True)]
    return order


def attribution(spliced: SplicedModel, hook: str, enc: EncodedSet, idx: list[int] | None = None,
                batch: int = 8) -> torch.Tensor:
    """Step 3 of the module docstring: mean over items of sum_positions f * d metric / d f [F]."""
    idx = enc.behaviour_idx() if idx is None else idx
    total_F = None
    for mb in metric_batches(enc, idx, batch):
        run = spliced.run(mb.tokens_NT, mask_NT=mb.mask_NT, grad=True)
        values_from_logits(enc, mb, run.logits_NTV).sum().backward()
        f_NTF = run.latents[hook]
        mask = mb.mask_NT.to(f_NTF.device)[..., None]
        contrib_F = (f_NTF.detach() * f_NTF.grad * mask).sum((0, 1)).cpu().double()
        total_F = contrib_F if total_F is None else total_F + contrib_F
    return (total_F / len(idx)).float()


# -- probes ------------------------------------------------------------------------------------


@dataclass
class LogisticProbe:
    """Logistic regression on standardised inputs: p = sigmoid(((x - mean) / std) @ w + b)."""

    w_K: torch.Tensor
    b: float
    mean_K: torch.Tensor
    std_K: torch.Tensor
    l2: float

    def score(self, x_NK: torch.Tensor) -> torch.Tensor:
        """Logits [N]."""
        return ((x_NK.float() - self.mean_K) / self.std_K) @ self.w_K + self.b


def fit_logistic(x_NK: torch.Tensor, y_N: torch.Tensor, l2: float, max_iter: int = 200) -> LogisticProbe:
    """Minimise mean BCE + l2 * ||w||^2 by LBFGS (inputs standardised on x)."""
    x = x_NK.float()
    mean_K, std_K = x.mean(0), x.std(0).clamp_min(1e-6)
    z = (x - mean_K) / std_K
    w = torch.zeros(x.shape[1], requires_grad=True)
    b = torch.zeros((), requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=max_iter, line_search_fn="strong_wolfe")
    yf = y_N.float()

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z @ w + b, yf) + l2 * w.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return LogisticProbe(w.detach(), float(b.detach()), mean_K, std_K, l2)


def auroc(scores_N: torch.Tensor, y_N: torch.Tensor) -> float:
    """AUROC of one score vector."""
    return float(mann_whitney(scores_N[:, None], y_N)[0][0])


def fit_probe_cv(x_NK: torch.Tensor, y_N: torch.Tensor, group_N: torch.Tensor, folds: int = 3,
                 grid: tuple[float, ...] = L2_GRID) -> LogisticProbe:
    """Pick the L2 strength by grouped k-fold AUROC on (x, y), then refit on all of it."""
    groups = group_N.unique()
    fold_of = {int(g): i % folds for i, g in enumerate(groups[torch.randperm(len(groups),
                                                               generator=torch.Generator().manual_seed(0))])}
    fold_N = torch.tensor([fold_of[int(g)] for g in group_N])
    best, best_auc = grid[0], -1.0
    for l2 in grid:
        aucs = []
        for k in range(folds):
            tr, va = fold_N != k, fold_N == k
            if y_N[va].unique().numel() < 2 or y_N[tr].unique().numel() < 2:
                continue
            aucs.append(auroc(fit_logistic(x_NK[tr], y_N[tr], l2).score(x_NK[va]), y_N[va]))
        mean_auc = sum(aucs) / len(aucs) if aucs else 0.0
        if mean_auc > best_auc + 1e-9:
            best, best_auc = l2, mean_auc
    return fit_logistic(x_NK, y_N, best)


@dataclass
class ProbeResults:
    """Held-out AUROCs of the baselines (step 5 of the module docstring)."""

    dense_auroc: float
    dense_l2: float
    sparse_auroc: dict[int, float]
    """k -> held-out AUROC of the probe on the top-k latents."""
    best_latent: int
    best_latent_auroc: float
    """Held-out AUROC of the top latent alone, oriented by its train AUROC."""
    top_latents_test_auroc: dict[int, float]
    """latent -> held-out AUROC (oriented) of each of the first latents of the order."""

    def to_dict(self) -> dict:
        return {"dense_probe_auroc": self.dense_auroc, "dense_probe_l2": self.dense_l2,
                "sparse_probe_auroc": {str(k): v for k, v in self.sparse_auroc.items()},
                "best_latent": self.best_latent, "best_latent_auroc": self.best_latent_auroc,
                "top_latents_test_auroc": {str(k): v for k, v in self.top_latents_test_auroc.items()}}


def probe_baselines(train: SideFeatures, test: SideFeatures, ranking: LatentRanking,
                    ks: tuple[int, ...] = (1, 4, 16), n_report: int = 10) -> ProbeResults:
    """Step 5 of the module docstring."""
    dense = fit_probe_cv(train.acts_ND, train.y_N, train.group_N)
    sparse = {}
    for k in ks:
        cols = ranking.order[:k]
        probe = fit_probe_cv(train.latents_NF[:, cols], train.y_N, train.group_N)
        sparse[k] = auroc(probe.score(test.latents_NF[:, cols]), test.y_N)
    per_latent = {}
    for lat in ranking.order[:n_report].tolist():
        sign = 1.0 if float(ranking.auroc_F[lat]) >= 0.5 else -1.0
        per_latent[lat] = auroc(sign * test.latents_NF[:, lat], test.y_N)
    best = int(ranking.order[0])
    return ProbeResults(auroc(dense.score(test.acts_ND), test.y_N), dense.l2, sparse, best,
                        per_latent[best], per_latent)
