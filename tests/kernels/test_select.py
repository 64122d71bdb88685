"""Fused bias + ReLU + top-k (and AuxK, BatchTopK) selection: Triton against the eager twin and a
float64 reference, on awkward shapes."""

from __future__ import annotations

import pytest
import torch
from kernel_refs import biased, check_selection, top_values
from sae_kernels import _triton_select, eager, triton_ops

SHAPES = [(1, 1, 1), (3, 100, 1), (4, 1000, 7), (2, 777, 33), (5, 3000, 64)]


def _inputs(gen, n_rows, d_sae, dtype=torch.float32, scale=1.0):
    pre = (torch.randn(n_rows, d_sae, generator=gen) * scale).to(dtype)
    return pre, torch.randn(d_sae, generator=gen) * 0.3


@pytest.mark.parametrize("n_rows,d_sae,k", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_topk_matches_eager_and_reference(device, gen, n_rows, d_sae, k, dtype):
    pre, b_enc = _inputs(gen, n_rows, d_sae, dtype)
    pre_dev = pre.to(device, copy=True)
    vals, idx, aux_vals, aux_idx = triton_ops.topk_select(pre_dev, b_enc.to(device), k)
    assert vals.dtype == dtype and aux_vals.shape == aux_idx.shape == (n_rows, 0)
    assert torch.equal(pre_dev.cpu(), pre), "topk_select must leave pre_BF unchanged"
    check_selection(vals, idx, biased(pre, b_enc), k)
    eager_vals = eager.topk_select(pre.clone(), b_enc, k)[0]
    assert torch.equal(vals.cpu().sort(1).values, eager_vals.sort(1).values)


@pytest.mark.parametrize("base_block", [64, 256])
def test_tournament_rounds_with_aux(device, gen, base_block):
    """Rows longer than one chunk go through candidate rounds, the AuxK pool alongside."""
    pre, b_enc = _inputs(gen, 3, 1000)
    dead = torch.rand(1000, generator=gen) < 0.3
    vals, idx, aux_vals, aux_idx = _triton_select.row_topk(
        pre.to(device), 5, b_enc.to(device), dead.to(device), 9, base_block=base_block
    )
    acts = biased(pre, b_enc)
    check_selection(vals, idx, acts, 5)
    check_selection(aux_vals, aux_idx, acts.masked_fill(~dead, 0.0), 9)
    assert bool(dead[aux_idx.cpu()].all())


def test_aux_with_fewer_dead_than_k_aux(device, gen):
    pre, b_enc = _inputs(gen, 4, 300)
    dead = torch.zeros(300, dtype=torch.bool)
    dead[[3, 77, 299]] = True
    _, _, aux_vals, aux_idx = triton_ops.topk_select(pre.to(device), b_enc.to(device), 4, dead.to(device), 6)
    acts = biased(pre, b_enc).masked_fill(~dead, 0.0)
    check_selection(aux_vals, aux_idx, acts, 6)
    positive = aux_vals.cpu() > 0
    assert bool(dead[aux_idx.cpu()[positive]].all())
    eager_aux = eager.topk_select(pre.clone(), b_enc, 4, dead, 6)[2]
    assert torch.equal(aux_vals.cpu().sort(1).values, eager_aux.sort(1).values)


@pytest.mark.parametrize("k", [1, 6, 40])
def test_ties_and_all_negative_rows(device, gen, k):
    """Integer-valued rows tie everywhere; the last row is all negative (every value 0)."""
    pre = torch.randint(-3, 4, (4, 200), generator=gen).float()
    pre[-1] = -1.0
    b_enc = torch.zeros(200)
    vals, idx, _, _ = triton_ops.topk_select(pre.to(device), b_enc.to(device), k)
    check_selection(vals, idx, biased(pre, b_enc), k)
    assert bool((vals.cpu()[-1] == 0).all())


def test_k_beyond_one_chunk_falls_back(device, gen):
    pre, b_enc = _inputs(gen, 2, 20000)
    vals, idx, _, _ = triton_ops.topk_select(pre.to(device), b_enc.to(device), 9000)
    check_selection(vals, idx, biased(pre, b_enc), 9000)


def _check_padded(vals_BK, idx_BK, acts_BF, k_total):
    """Every positive entry is a distinct latent of its row; together they are the k_total
    largest positives of the batch; padding is (0, 0)."""
    vals, idx = vals_BK.cpu(), idx_BK.cpu()
    taken = vals > 0
    assert bool((idx[~taken] == 0).all()) and bool((vals[~taken] == 0).all())
    torch.testing.assert_close(vals.double()[taken], acts_BF.gather(1, idx)[taken], rtol=0, atol=0)
    for row_idx, row_taken in zip(idx, taken, strict=True):
        assert len(set(row_idx[row_taken].tolist())) == int(row_taken.sum())
    expected = acts_BF.reshape(-1).topk(k_total).values
    expected = expected[expected > 0].sort().values
    torch.testing.assert_close(vals.double()[taken].sort().values, expected, rtol=0, atol=0)


@pytest.mark.parametrize("n_rows,d_sae,k", [(1, 5, 1), (6, 300, 4), (5, 777, 33)])
def test_batch_topk_matches_eager_and_reference(device, gen, n_rows, d_sae, k):
    pre, b_enc = _inputs(gen, n_rows, d_sae)
    pre_dev = pre.to(device, copy=True)
    vals, idx = triton_ops.batch_topk_select(pre_dev, b_enc.to(device), n_rows * k)
    pre_eager = pre.clone()
    eager_vals, _ = eager.batch_topk_select(pre_eager, b_enc, n_rows * k)
    torch.testing.assert_close(pre_dev.cpu(), pre_eager, rtol=0, atol=0)
    assert vals.shape == eager_vals.shape
    assert torch.equal(vals.cpu().sort(1).values, eager_vals.sort(1).values)
    _check_padded(vals, idx, biased(pre, b_enc), n_rows * k)


def test_batch_topk_skewed_rows_grow_the_candidate_cap(device, gen):
    """One row holds every winner: the first per-row cap (4k) is too small and must grow."""
    pre, b_enc = _inputs(gen, 8, 500)
    pre[2] += 20.0
    vals, idx = triton_ops.batch_topk_select(pre.to(device, copy=True), b_enc.to(device), 8 * 3)
    assert vals.shape[1] == 24
    _check_padded(vals, idx, biased(pre, b_enc), 24)


@pytest.mark.gpu
@pytest.mark.parametrize("d_sae,k,k_aux", [(32768, 32, 512), (131072, 64, 256), (50000, 200, 0)])
def test_gpu_sizes(gen, d_sae, k, k_aux):
    """Production sizes in bf16, several chunks per row, on the GPU only."""
    from kernel_refs import has_gpu

    if not has_gpu():
        pytest.skip("needs a CUDA GPU and TRITON_INTERPRET unset or 0")
    pre, b_enc = _inputs(gen, 64, d_sae, torch.bfloat16)
    dead = torch.rand(d_sae, generator=gen) < 0.05
    vals, idx, aux_vals, aux_idx = triton_ops.topk_select(
        pre.cuda(), b_enc.cuda(), k, dead.cuda() if k_aux else None, k_aux
    )
    acts = biased(pre, b_enc)
    check_selection(vals, idx, acts, k)
    if k_aux:
        check_selection(aux_vals, aux_idx, acts.masked_fill(~dead, 0.0), k_aux)
    assert torch.equal(top_values(vals.cpu().double(), k), top_values(acts, k))


@pytest.mark.parametrize("k", [1, 7, 64])
def test_threshold_search_on_extreme_rows(device, gen, k):
    """The 4-way threshold search on rows spanning 60 decades, with exactly k positive values,
    and with a block of equal maxima larger than k: same selection as torch."""
    n = 300
    log_uniform = torch.exp(torch.empty(n).uniform_(-69, 69, generator=gen))  # 1e-30 .. 1e30
    exactly_k = torch.full((n,), -1.0)
    exactly_k[torch.randperm(n, generator=gen)[:k]] = torch.rand(k, generator=gen) + 0.5
    equal_max = torch.rand(n, generator=gen)
    equal_max[:100] = 2.0
    pre = torch.stack([log_uniform, exactly_k, equal_max, -log_uniform])
    b_enc = torch.zeros(n)
    vals, idx, _, _ = triton_ops.topk_select(pre.clone().to(device), b_enc.to(device), k)
    ref = pre.relu().topk(k, dim=-1).values
    assert torch.equal(vals.cpu().sort(-1, descending=True).values, ref)
    picked = pre.relu().gather(1, idx.cpu())
    assert torch.equal(picked.sort(-1, descending=True).values, ref)
