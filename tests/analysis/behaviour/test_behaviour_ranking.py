"""Rank statistics, BH-FDR and probes against brute force and exact permutation moments."""

from __future__ import annotations

import itertools
import math

import torch

from sae.analysis.behaviour.ranking import (
    auroc,
    benjamini_hochberg,
    cohen_d,
    fit_probe_cv,
    mann_whitney,
    midranks,
    wilcoxon_signed_rank,
)


def _brute_auroc(x: list[float], y: list[int]) -> float:
    pos = [a for a, t in zip(x, y, strict=True) if t]
    neg = [a for a, t in zip(x, y, strict=True) if not t]
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def test_midranks_and_auroc_match_brute_force_with_ties():
    x_NF = torch.tensor([[0.0, 1], [0, 2], [1, 2], [3, 2], [0, 5], [2, 0]])
    ranks, ties = midranks(x_NF)
    assert ranks[:, 0].tolist() == [2.0, 2.0, 4.0, 6.0, 2.0, 5.0]
    assert ties.tolist() == [24.0, 24.0]  # one tie of 3 in each column: 3^3 - 3
    y = torch.tensor([0, 1, 1, 1, 0, 0])
    got, _ = mann_whitney(x_NF, y)
    for f in range(2):
        assert math.isclose(float(got[f]), _brute_auroc(x_NF[:, f].tolist(), y.tolist()), rel_tol=1e-6)


def test_mann_whitney_variance_is_the_exact_permutation_variance():
    # with ties, the tie-corrected variance equals the variance of U over all relabellings
    x = torch.tensor([0.0, 0, 0, 1, 1, 2, 3, 3])
    n1 = 3
    us = []
    for pos in itertools.combinations(range(8), n1):
        y = torch.zeros(8, dtype=torch.long)
        y[list(pos)] = 1
        a, _ = mann_whitney(x[:, None], y)
        us.append(float(a[0]) * n1 * (8 - n1))
    exact_var = torch.tensor(us, dtype=torch.float64).var(unbiased=False)
    y = torch.tensor([1, 1, 1, 0, 0, 0, 0, 0])
    a, p = mann_whitney(x[:, None], y)
    u = float(a[0]) * 15
    z = (u - 7.5) / math.sqrt(exact_var)
    assert math.isclose(float(p[0]), math.erfc(abs(z) / math.sqrt(2)), rel_tol=1e-6)


def test_wilcoxon_variance_is_the_exact_sign_flip_variance():
    d = torch.tensor([0.0, 0.5, -0.5, 1.0, 1.0, 2.0, -3.0, 0.0, 4.0, 1.0])
    nz = d[d != 0]
    w_all = []
    for signs in itertools.product((1, -1), repeat=nz.numel()):
        w_all.append(float(wilcoxon_stat(nz * torch.tensor(signs, dtype=torch.float32))))
    w_all_t = torch.tensor(w_all, dtype=torch.float64)
    z = (wilcoxon_stat(d) - w_all_t.mean()) / w_all_t.var(unbiased=False).sqrt()
    p = wilcoxon_signed_rank(d[:, None])
    assert math.isclose(float(p[0]), math.erfc(abs(float(z)) / math.sqrt(2)), rel_tol=1e-6)
    assert float(wilcoxon_signed_rank(torch.zeros(6, 1))[0]) == 1.0


def wilcoxon_stat(d: torch.Tensor) -> float:
    """W+ by brute force: mid-ranks of |d| over non-zero differences, summed where d > 0."""
    nz = d[d != 0]
    a = nz.abs()
    ranks = [(a < v).sum().item() + ((a == v).sum().item() + 1) / 2 for v in a]
    return sum(r for r, v in zip(ranks, nz, strict=True) if v > 0)


def test_p_values_are_calibrated_under_the_null():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(200, 3000, generator=gen)
    y = (torch.arange(200) % 2)
    _, p_mw = mann_whitney(x, y)
    p_w = wilcoxon_signed_rank(x[:100] - x[100:])
    for p in (p_mw, p_w):
        assert 0.035 < float((p < 0.05).double().mean()) < 0.065
        assert benjamini_hochberg(p, 0.05)[1].sum() <= 3


def test_benjamini_hochberg_matches_its_definition():
    p = torch.tensor([0.01, 0.04, 0.03, 0.005, 0.5, 0.2])
    q, reject = benjamini_hochberg(p, 0.05)
    # sorted: .005 .01 .03 .04 .2 .5; k*q/m: .0083 .0167 .025 .0333 .0417 .05 -> largest passing k = 2
    assert reject.tolist() == [True, False, False, True, False, False]
    # adjusted: p_(k) m / k, made monotone from the largest p down
    assert torch.allclose(q, torch.tensor([0.03, 0.06, 0.06, 0.03, 0.5, 0.24], dtype=q.dtype))


def test_cohen_d_and_probe_on_separable_data():
    gen = torch.Generator().manual_seed(1)
    y = torch.arange(300) % 2
    w = torch.randn(20, generator=gen)
    x = torch.randn(300, 20, generator=gen) + 0.6 * y[:, None].float() * w / w.norm()
    diff, d = cohen_d(x, y)
    assert torch.allclose(diff, x[y == 1].mean(0) - x[y == 0].mean(0), atol=1e-5)
    probe = fit_probe_cv(x[:200], y[:200], torch.arange(200))
    held = auroc(probe.score(x[200:]), y[200:])
    best_single = max(auroc(x[200:, j], y[200:]) for j in range(20))
    assert held > 0.65 and held > best_single - 0.05
    shuffled = fit_probe_cv(x[:200], y[torch.randperm(200, generator=gen)], torch.arange(200))
    assert abs(auroc(shuffled.score(x[200:]), y[200:]) - 0.5) < 0.15
