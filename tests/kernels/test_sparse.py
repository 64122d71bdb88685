"""Sparse decode, its backward, the sparse outer products and the decoder row maintenance:
Triton against the eager twin and a dense float64 reference, with repeated indices, a padded
variable-sparsity layout and d_in that is no power of two."""

from __future__ import annotations

import pytest
import torch
from kernel_refs import close, dense
from sae_kernels import eager, triton_ops

# (B, K, F, D): K=1, F below the latent block, D not a power of two; small F forces repeats.
SHAPES = [(1, 1, 1, 1), (3, 1, 5, 7), (6, 5, 50, 37), (5, 40, 70, 130)]


def _tol(device: str, dtype: torch.dtype = torch.float32) -> dict:
    """fp32 sums in another order; TF32 tensor cores on a GPU; bf16 inputs round at 2^-8."""
    if dtype == torch.bfloat16:
        return {"rtol": 2e-2, "atol": 2e-2}
    return {"rtol": 5e-3, "atol": 5e-3} if device == "cuda" else {"rtol": 1e-5, "atol": 1e-5}


def _code(gen, n_rows, k, d_sae, pad=0):
    """Values and indices with a repeated index per row and `pad` zero-valued padded slots."""
    vals = torch.randn(n_rows, k, generator=gen)
    idx = torch.randint(0, d_sae, (n_rows, k), generator=gen)
    if k > 1:
        idx[:, 1] = idx[:, 0]
    if pad:
        vals[:, -pad:] = 0.0
    return vals, idx


@pytest.mark.parametrize("n_rows,k,d_sae,d_in", SHAPES)
def test_decode_and_value_grad(device, gen, n_rows, k, d_sae, d_in):
    vals, idx = _code(gen, n_rows, k, d_sae)
    W_dec = torch.randn(d_sae, d_in, generator=gen)
    grad_out = torch.randn(n_rows, d_in, generator=gen)
    G = dense(vals, idx, d_sae)
    out = triton_ops.sparse_decode(vals.to(device), idx.to(device), W_dec.to(device))
    assert out.dtype == torch.float32 and out.shape == (n_rows, d_in)
    close(out, G @ W_dec.double())
    close(out, eager.sparse_decode(vals, idx, W_dec))
    g_vals = triton_ops.sparse_decode_grad_vals(grad_out.to(device), idx.to(device), W_dec.to(device))
    close(g_vals, (grad_out.double() @ W_dec.double().t()).gather(1, idx))
    close(g_vals, eager.sparse_decode_grad_vals(grad_out, idx, W_dec))


@pytest.mark.parametrize("n_rows,k,d_sae,d_in", SHAPES)
def test_outer_and_encoder_grad(device, gen, n_rows, k, d_sae, d_in):
    coef, idx = _code(gen, n_rows, k, d_sae)
    x = torch.randn(n_rows, d_in, generator=gen)
    G = dense(coef, idx, d_sae)
    out = triton_ops.sparse_outer(idx.to(device), coef.to(device), x.to(device), d_sae)
    assert out.shape == (d_sae, d_in)
    close(out, G.t() @ x.double(), **_tol(device))
    close(out, eager.sparse_outer(idx, coef, x, d_sae), **_tol(device))
    grad_W, grad_b = triton_ops.sparse_encoder_grad(x.to(device), coef.to(device), idx.to(device), d_sae)
    assert grad_W.shape == (d_in, d_sae) and grad_b.shape == (d_sae,)
    close(grad_W, x.double().t() @ G, **_tol(device))
    close(grad_b, G.sum(0), **_tol(device))
    eager_W, eager_b = eager.sparse_encoder_grad(x, coef, idx, d_sae)
    close(grad_W, eager_W, **_tol(device))
    close(grad_b, eager_b, **_tol(device))


@pytest.mark.parametrize("n_rows,k,d_sae,d_in", SHAPES[1:])
def test_input_grad(device, gen, n_rows, k, d_sae, d_in):
    coef, idx = _code(gen, n_rows, k, d_sae)
    W_enc = torch.randn(d_in, d_sae, generator=gen)
    grad_x = triton_ops.sparse_input_grad(coef.to(device), idx.to(device), W_enc.to(device))
    close(grad_x, dense(coef, idx, d_sae) @ W_enc.double().t())
    close(grad_x, eager.sparse_input_grad(coef, idx, W_enc))


def test_bf16_inputs(device, gen):
    """bf16 encoder inputs (the training setup): grads come back in bf16 like the eager twin's."""
    coef, idx = _code(gen, 9, 6, 40)
    x = torch.randn(9, 48, generator=gen).bfloat16()
    grad_W, grad_b = triton_ops.sparse_encoder_grad(x.to(device), coef.to(device), idx.to(device), 40)
    assert grad_W.dtype == grad_b.dtype == torch.bfloat16
    G = dense(coef.bfloat16(), idx, 40)
    close(grad_W, x.double().t() @ G, **_tol(device, torch.bfloat16))
    close(grad_b, G.sum(0), **_tol(device, torch.bfloat16))
    W_dec = torch.randn(40, 48, generator=gen)
    out = triton_ops.sparse_decode(coef.bfloat16().to(device), idx.to(device), W_dec.to(device))
    assert out.dtype == torch.float32
    close(out, G @ W_dec.double())


def test_padded_rows_are_absent(device, gen):
    """Variable sparsity: zero-valued padded slots change no output (decode, W grads)."""
    vals, idx = _code(gen, 7, 12, 30, pad=5)
    W_dec = torch.randn(30, 19, generator=gen)
    grad_out = torch.randn(7, 19, generator=gen)
    args = [t.to(device) for t in (vals, idx, W_dec)]
    trimmed = [vals[:, :7].to(device), idx[:, :7].to(device), W_dec.to(device)]
    close(triton_ops.sparse_decode(*args), triton_ops.sparse_decode(*trimmed))
    full = triton_ops.sparse_outer(idx.to(device), vals.to(device), grad_out.to(device), 30)
    cut = triton_ops.sparse_outer(idx[:, :7].to(device), vals[:, :7].to(device), grad_out.to(device), 30)
    close(full, cut, **_tol(device))


@pytest.mark.parametrize("d_sae,d_in", [(1, 1), (50, 37), (33, 300)])
@pytest.mark.parametrize("transposed", [False, True])
def test_row_maintenance(device, gen, d_sae, d_in, transposed):
    """Parallel-gradient removal and unit-norm rows, also on a transposed (strided) W_dec view."""
    W = torch.randn(d_sae, d_in, generator=gen)
    grad = torch.randn(d_sae, d_in, generator=gen)
    W_dev = (W.t().contiguous().to(device).t() if transposed else W.to(device, copy=True))
    triton_ops.normalize_rows_(W_dev)
    W_ref = W.double() / W.double().norm(dim=1, keepdim=True)
    close(W_dev, W_ref)
    W_eager = W.clone()
    eager.normalize_rows_(W_eager)
    close(W_dev, W_eager)
    grad_dev = grad.to(device, copy=True)
    triton_ops.remove_parallel_grad_(W_dev, grad_dev)
    W_used = W_dev.cpu().double()
    expected = grad.double() - (grad.double() * W_used).sum(1, keepdim=True) * W_used
    close(grad_dev, expected)
    assert float((grad_dev.cpu().double() * W_used).sum(1).abs().max()) < 1e-5


def test_zero_rows_normalize_to_zero(device):
    W = torch.zeros(3, 5, device=device)
    triton_ops.normalize_rows_(W)
    assert bool((W == 0).all())


@pytest.mark.gpu
def test_gpu_sizes(gen):
    """Training sizes: d_in 768, d_sae 32768, k 32, batch 1024, on the GPU only."""
    from kernel_refs import has_gpu

    if not has_gpu():
        pytest.skip("needs a CUDA GPU and TRITON_INTERPRET unset or 0")
    n_rows, k, d_sae, d_in = 1024, 32, 32768, 768
    vals, idx = _code(gen, n_rows, k, d_sae)
    x = torch.randn(n_rows, d_in, generator=gen)
    W_dec = torch.randn(d_sae, d_in, generator=gen)
    cuda = [t.cuda() for t in (vals, idx, x, W_dec)]
    close(
        triton_ops.sparse_decode(cuda[0], cuda[1], cuda[3]), eager.sparse_decode(vals, idx, W_dec),
        rtol=1e-4, atol=1e-4,
    )
    close(
        triton_ops.sparse_decode_grad_vals(cuda[2], cuda[1], cuda[3]),
        eager.sparse_decode_grad_vals(x, idx, W_dec), rtol=1e-4, atol=1e-3,
    )
    grad_W, grad_b = triton_ops.sparse_encoder_grad(cuda[2], cuda[0], cuda[1], d_sae)
    eager_W, eager_b = eager.sparse_encoder_grad(x, vals, idx, d_sae)
    close(grad_W, eager_W, rtol=1e-2, atol=1e-2)
    close(grad_b, eager_b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backend", ["eager", "triton"])
def test_value_grad_of_inactive_entries_is_zero(device, gen, backend):
    """With `vals_BK`, entries whose value is 0 get gradient 0 (their rows are not read); the
    others are exact."""
    from sae_kernels import eager, triton_ops

    if backend == "eager" and device == "cuda":
        pytest.skip("the eager twin is checked on the CPU")
    ops = eager if backend == "eager" else triton_ops
    n_rows, k, d_sae, d_in = 9, 6, 40, 13
    vals, idx = _code(gen, n_rows, k, d_sae)
    vals[vals < 0.5] = 0.0
    W = torch.randn(d_sae, d_in, generator=gen)
    g = torch.randn(n_rows, d_in, generator=gen)
    got = ops.sparse_decode_grad_vals(g.to(device), idx.to(device), W.to(device), vals.to(device))
    full = torch.einsum("bkd,bd->bk", W.double()[idx], g.double())
    close(got, torch.where(vals > 0, full, 0.0))
