"""Triton kernels for the sparse products of a TopK SAE and the decoder row maintenance.

1. Sparse decode, out[b] = sum_j vals[b, j] W[idx[b, j]]: one program per (row, D block) gathers
   a [BLOCK_K, BLOCK_D] tile of W rows per step and reduces over K in fp32.
2. Value gradient, g[b, j] = <grad_out[b], W[idx[b, j]]>: one program per (row, K block) walks D.
3. Sparse outer product, out[f] = sum_{idx[b, j] = f} coef[b, j] rows[b] (the decoder-weight
   gradient, and transposed the encoder-weight gradient): the (b, j) entries are sorted by latent
   (torch.sort) into segments; one program per (BLOCK_F latents, BLOCK_D columns) multiplies the
   [BLOCK_F, BLOCK_E] one-hot-times-coefficient matrix of its segment with the gathered
   [BLOCK_E, BLOCK_D] rows on the tensor cores. No atomics, deterministic, every output element
   written once (zeros for unused latents), either output layout ([F, D] or [D, F]) written
   directly, and the column sums (the encoder-bias gradient) come out of the same pass.
4. Row maintenance of W_dec [F, D]: remove from each row's gradient its component along the row,
   and rescale rows to unit norm; one program per BLOCK_R full rows. The same programs can also
   run the whole decoder optimizer step (projection, Adam, renormalisation) in one pass.

Variable sparsity (BatchTopK, JumpReLU) uses a padded [B, Kmax] layout: padded entries carry value
0 and any valid index, so they add nothing to a decode or an outer product; their value gradient
is computed but is masked by the encoder backward (value 0 passes no gradient through ReLU).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._triton_select import interpreting

# Precision of fp32 tl.dot in the outer product on a GPU: TF32 (10-bit mantissa) like cuBLAS with
# allow_tf32; "ieee" is exact fp32 at several times the cost. bf16 inputs always use bf16 MMA.
FP32_DOT_PRECISION = "tf32"


@triton.jit
def _decode_kernel(
    vals_ptr, idx_ptr, w_ptr, out_ptr,
    n_rows, K, D, stride_vb, stride_ib, stride_wf, stride_wd, stride_ob,
    ROWS: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """out[rows, d-block] = sum over K of vals[b, j] * W[idx[b, j], d-block]."""
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    row_ok = rows < n_rows
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    col_ok = cols < D
    acc = tl.zeros([ROWS, BLOCK_D], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        ok = row_ok[:, None] & (ks < K)[None, :]
        v = tl.load(vals_ptr + rows[:, None] * stride_vb + ks[None, :], mask=ok, other=0.0)
        i = tl.load(idx_ptr + rows[:, None] * stride_ib + ks[None, :], mask=ok, other=0)
        # Zero values (ReLU zeros, AuxK and BatchTopK padding) read no decoder row.
        w = tl.load(
            w_ptr + i.to(tl.int64)[:, :, None] * stride_wf + cols[None, None, :] * stride_wd,
            mask=(ok & (v != 0))[:, :, None] & col_ok[None, None, :], other=0.0,
        ).to(tl.float32)
        acc += tl.sum(w * v.to(tl.float32)[:, :, None], 1)
    out_ptrs = out_ptr + rows[:, None] * stride_ob + cols[None, :]
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


@triton.jit
def _grad_vals_kernel(
    g_ptr, idx_ptr, w_ptr, out_ptr, vals_ptr,
    n_rows, K, D, stride_gb, stride_ib, stride_wf, stride_ob, stride_vb,
    ROWS: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr, SKIP_ZERO: tl.constexpr,
):
    """out[rows, k-block] = <grad_out[b], W[idx[b, j]]>, walking D in BLOCK_D steps; with
    SKIP_ZERO, 0 (and no row read) where vals[b, j] == 0."""
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    ks = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    ok = (rows < n_rows)[:, None] & (ks < K)[None, :]
    i = tl.load(idx_ptr + rows[:, None] * stride_ib + ks[None, :], mask=ok, other=0).to(tl.int64)
    if SKIP_ZERO:
        ok = ok & (tl.load(vals_ptr + rows[:, None] * stride_vb + ks[None, :], mask=ok, other=0.0) != 0)
    acc = tl.zeros([ROWS, BLOCK_K], dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D)
        col_ok = cols < D
        g = tl.load(
            g_ptr + rows[:, None] * stride_gb + cols[None, :],
            mask=(rows < n_rows)[:, None] & col_ok[None, :], other=0.0,
        ).to(tl.float32)
        w = tl.load(
            w_ptr + i[:, :, None] * stride_wf + cols[None, None, :],
            mask=ok[:, :, None] & col_ok[None, None, :], other=0.0,
        ).to(tl.float32)
        acc += tl.sum(w * g[:, None, :], 2)
    out_ok = (rows < n_rows)[:, None] & (ks < K)[None, :]
    tl.store(out_ptr + rows[:, None] * stride_ob + ks[None, :], acc.to(out_ptr.dtype.element_ty), mask=out_ok)


@triton.jit
def _segment_outer_kernel(
    lat_ptr, src_ptr, coef_ptr, offsets_ptr, rows_ptr, out_ptr, colsum_ptr,
    n_out, D, stride_rb, stride_of, stride_od,
    BLOCK_F: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_D: tl.constexpr,
    HAS_COLSUM: tl.constexpr, DOT_FP32: tl.constexpr, PRECISION: tl.constexpr,
):
    """out[f-block, d-block] = onehot(latent - f0) * coef @ rows[src] over the block's segment."""
    f0 = tl.program_id(0) * BLOCK_F
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    col_ok = cols < D
    lats = f0 + tl.arange(0, BLOCK_F)
    start = tl.load(offsets_ptr + f0)
    end = tl.load(offsets_ptr + tl.minimum(f0 + BLOCK_F, n_out))
    acc = tl.zeros([BLOCK_F, BLOCK_D], dtype=tl.float32)
    colsum = tl.zeros([BLOCK_F], dtype=tl.float32)
    for e0 in range(start, end, BLOCK_E):
        es = e0 + tl.arange(0, BLOCK_E)
        e_ok = es < end
        lat = tl.load(lat_ptr + es, mask=e_ok, other=-1)
        coef = tl.load(coef_ptr + es, mask=e_ok, other=0.0).to(tl.float32)
        src = tl.load(src_ptr + es, mask=e_ok, other=0).to(tl.int64)
        a = tl.where(lats[:, None] == lat[None, :], coef[None, :], 0.0)
        r = tl.load(
            rows_ptr + src[:, None] * stride_rb + cols[None, :],
            mask=e_ok[:, None] & col_ok[None, :], other=0.0,
        )
        if DOT_FP32:
            acc = tl.dot(a, r.to(tl.float32), acc, input_precision=PRECISION)
        else:
            acc = tl.dot(a.to(r.dtype), r, acc)
        if HAS_COLSUM:
            colsum += tl.sum(a, 1)
    lat_ok = lats < n_out
    out_ptrs = out_ptr + lats[:, None].to(tl.int64) * stride_of + cols[None, :].to(tl.int64) * stride_od
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=lat_ok[:, None] & col_ok[None, :])
    if HAS_COLSUM:
        if tl.program_id(1) == 0:
            tl.store(colsum_ptr + lats, colsum.to(colsum_ptr.dtype.element_ty), mask=lat_ok)


@triton.jit
def _remove_parallel_kernel(
    w_ptr, g_ptr, n_rows, D, stride_wf, stride_wd, stride_gf, stride_gd,
    BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """grad[r] -= <grad[r], W[r]> W[r] for BLOCK_R whole rows."""
    rows = (tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)).to(tl.int64)
    cols = tl.arange(0, BLOCK_D).to(tl.int64)
    ok = (rows < n_rows)[:, None] & (cols < D)[None, :]
    w_ptrs = w_ptr + rows[:, None] * stride_wf + cols[None, :] * stride_wd
    w = tl.load(w_ptrs, mask=ok, other=0.0).to(tl.float32)
    g_ptrs = g_ptr + rows[:, None] * stride_gf + cols[None, :] * stride_gd
    g = tl.load(g_ptrs, mask=ok, other=0.0).to(tl.float32)
    dot = tl.sum(w * g, 1)
    tl.store(g_ptrs, (g - dot[:, None] * w).to(g_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _normalize_kernel(
    w_ptr, n_rows, D, stride_wf, stride_wd, eps, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr
):
    """W[r] /= max(||W[r]||, eps) for BLOCK_R whole rows."""
    rows = (tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)).to(tl.int64)
    cols = tl.arange(0, BLOCK_D).to(tl.int64)
    ok = (rows < n_rows)[:, None] & (cols < D)[None, :]
    ptrs = w_ptr + rows[:, None] * stride_wf + cols[None, :] * stride_wd
    w = tl.load(ptrs, mask=ok, other=0.0).to(tl.float32)
    norm = tl.sqrt(tl.sum(w * w, 1))
    tl.store(ptrs, (w / tl.maximum(norm, eps)[:, None]).to(w_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _decoder_adam_kernel(
    w_ptr, g_ptr, m_ptr, v_ptr, step_ptr, n_rows, D, lr, beta1, beta2, eps, norm_eps,
    PROJECT: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """One Adam step on BLOCK_R whole decoder rows: project the gradient, update both moments and
    the row, renormalise the row. W, grad and both moments share one contiguous [F, D] layout."""
    rows = (tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)).to(tl.int64)
    cols = tl.arange(0, BLOCK_D)
    ok = (rows < n_rows)[:, None] & (cols < D)[None, :]
    offs = rows[:, None] * D + cols[None, :]
    w = tl.load(w_ptr + offs, mask=ok, other=0.0)
    g = tl.load(g_ptr + offs, mask=ok, other=0.0)
    if PROJECT:
        g = g - tl.sum(g * w, 1)[:, None] * w
    m = beta1 * tl.load(m_ptr + offs, mask=ok, other=0.0) + (1.0 - beta1) * g
    v = beta2 * tl.load(v_ptr + offs, mask=ok, other=0.0) + (1.0 - beta2) * g * g
    step = tl.load(step_ptr).to(tl.float32)
    bias1 = 1.0 - tl.exp(step * tl.log(beta1))
    bias2 = 1.0 - tl.exp(step * tl.log(beta2))
    w = w - (lr / bias1) * m / (tl.sqrt(v) / tl.sqrt(bias2) + eps)
    w = w / tl.maximum(tl.sqrt(tl.sum(w * w, 1)), norm_eps)[:, None]
    tl.store(w_ptr + offs, w, mask=ok)
    tl.store(m_ptr + offs, m, mask=ok)
    tl.store(v_ptr + offs, v, mask=ok)


def _pow2_at_most(n: int, cap: int, floor: int = 16) -> int:
    return max(floor, min(cap, triton.next_power_of_2(n)))


def _rows_per_program(n_rows: int, tile: int) -> int:
    """Rows per program: 1 for wide tiles on a GPU; many in the interpreter, whose cost is per
    program, and for tiny tiles."""
    budget = 1 << 16 if interpreting() else 4096
    return max(1, min(triton.next_power_of_2(n_rows), budget // tile))


def decode(
    vals_BK: torch.Tensor, idx_BK: torch.Tensor, W_FD: torch.Tensor, out_dtype: torch.dtype
) -> torch.Tensor:
    """out[b] = sum_j vals[b, j] W[idx[b, j]]  ->  [B, D]; W may be any strided [F, D] view."""
    n_rows, k = idx_BK.shape
    d = W_FD.shape[1]
    out_BD = torch.empty(n_rows, d, dtype=out_dtype, device=W_FD.device)
    if n_rows == 0 or d == 0:
        return out_BD.zero_()
    vals_BK, idx_BK = vals_BK.contiguous(), idx_BK.contiguous()
    block_d = _pow2_at_most(d, 256)
    block_k = _pow2_at_most(k, 32, floor=1)
    rows = _rows_per_program(n_rows, block_k * block_d)
    _decode_kernel[(triton.cdiv(n_rows, rows), triton.cdiv(d, block_d))](
        vals_BK, idx_BK, W_FD, out_BD, n_rows, k, d, vals_BK.stride(0), idx_BK.stride(0),
        W_FD.stride(0), W_FD.stride(1), out_BD.stride(0),
        ROWS=rows, BLOCK_K=block_k, BLOCK_D=block_d,
    )
    return out_BD


def grad_vals(grad_out_BD: torch.Tensor, idx_BK: torch.Tensor, W_FD: torch.Tensor,
              vals_BK: torch.Tensor | None = None) -> torch.Tensor:
    """g[b, j] = <grad_out[b], W[idx[b, j]]>  ->  [B, K] in grad_out's dtype; 0 where
    vals_BK[b, j] == 0 when `vals_BK` is given (inactive entries: no row is read)."""
    n_rows, k = idx_BK.shape
    d = W_FD.shape[1]
    out_BK = torch.empty(n_rows, k, dtype=grad_out_BD.dtype, device=grad_out_BD.device)
    if out_BK.numel() == 0:
        return out_BK
    grad_out_BD, idx_BK, W_FD = grad_out_BD.contiguous(), idx_BK.contiguous(), W_FD.contiguous()
    block_k = _pow2_at_most(k, 64, floor=1)
    block_d = _pow2_at_most(d, 128)
    rows = _rows_per_program(n_rows, block_k * block_d)
    vals = idx_BK if vals_BK is None else vals_BK.contiguous()
    _grad_vals_kernel[(triton.cdiv(n_rows, rows), triton.cdiv(k, block_k))](
        grad_out_BD, idx_BK, W_FD, out_BK, vals, n_rows, k, d, grad_out_BD.stride(0), idx_BK.stride(0),
        W_FD.stride(0), out_BK.stride(0), vals.stride(0),
        ROWS=rows, BLOCK_K=block_k, BLOCK_D=block_d, SKIP_ZERO=vals_BK is not None,
    )
    return out_BK


def _segments(
    idx_BK: torch.Tensor, coef_BK: torch.Tensor, n_out: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Entries sorted by latent: (latent, source row, coefficient, [n_out + 1] segment offsets).

    Offsets come from a binary search of the sorted latents, not bincount: on a GPU bincount
    reads its output size back to the host, a sync that stalls the step's launch queue."""
    k = idx_BK.shape[1]
    flat = idx_BK.reshape(-1).to(torch.int64)
    lat_E, order_E = torch.sort(flat)
    bounds = torch.arange(n_out + 1, dtype=torch.int64, device=flat.device)
    offsets = torch.searchsorted(lat_E, bounds)
    return lat_E, order_E // k, coef_BK.reshape(-1)[order_E].contiguous(), offsets


def segment_outer(
    idx_BK: torch.Tensor,
    coef_BK: torch.Tensor,
    rows_BD: torch.Tensor,
    n_out: int,
    *,
    transposed: bool = False,
    with_colsum: bool = False,
    out_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(out, colsum): out[f] = sum_{idx[b,j]=f} coef[b,j] rows[b] as [F, D] (or [D, F] when
    `transposed`), and colsum[f] = sum_{idx[b,j]=f} coef[b,j] when `with_colsum`; in `out_dtype`
    (default rows' dtype), accumulated in fp32."""
    n_rows, d = rows_BD.shape
    dev, dtype = rows_BD.device, rows_BD.dtype
    out_dtype = out_dtype or dtype
    out = torch.empty((d, n_out) if transposed else (n_out, d), dtype=out_dtype, device=dev)
    colsum = torch.empty(n_out, dtype=out_dtype, device=dev) if with_colsum else None
    if idx_BK.numel() == 0 or d == 0:
        out.zero_()
        return out, None if colsum is None else colsum.zero_()
    rows_BD = rows_BD.contiguous()
    lat_E, src_E, coef_E, offsets = _segments(idx_BK, coef_BK, n_out)
    stride_of, stride_od = (1, n_out) if transposed else (d, 1)
    block_f, block_e, block_d = 64, 32, _pow2_at_most(d, 128)
    dot_fp32 = dtype == torch.float32 or interpreting()
    _segment_outer_kernel[(triton.cdiv(n_out, block_f), triton.cdiv(d, block_d))](
        lat_E, src_E, coef_E, offsets, rows_BD, out, out if colsum is None else colsum,
        n_out, d, rows_BD.stride(0), stride_of, stride_od,
        BLOCK_F=block_f, BLOCK_E=block_e, BLOCK_D=block_d, HAS_COLSUM=with_colsum,
        DOT_FP32=dot_fp32, PRECISION="ieee" if interpreting() else FP32_DOT_PRECISION,
    )
    return out, colsum


def _row_blocks(d: int) -> tuple[int, int]:
    block_d = triton.next_power_of_2(d)
    return max(1, 4096 // block_d), block_d


def remove_parallel_(W_FD: torch.Tensor, grad_FD: torch.Tensor) -> None:
    """grad[f] -= <grad[f], W[f]> W[f] in place (rows of W assumed unit norm)."""
    n_rows, d = W_FD.shape
    if n_rows == 0:
        return
    block_r, block_d = _row_blocks(d)
    _remove_parallel_kernel[(triton.cdiv(n_rows, block_r),)](
        W_FD, grad_FD, n_rows, d, *W_FD.stride(), *grad_FD.stride(),
        BLOCK_R=block_r, BLOCK_D=block_d, num_warps=4 if block_d <= 1024 else 8,
    )


def normalize_(W_FD: torch.Tensor, eps: float) -> None:
    """W[f] /= max(||W[f]||, eps) in place."""
    n_rows, d = W_FD.shape
    if n_rows == 0:
        return
    block_r, block_d = _row_blocks(d)
    _normalize_kernel[(triton.cdiv(n_rows, block_r),)](
        W_FD, n_rows, d, *W_FD.stride(), eps,
        BLOCK_R=block_r, BLOCK_D=block_d, num_warps=4 if block_d <= 1024 else 8,
    )


def decoder_adam_(
    W_FD: torch.Tensor, grad_FD: torch.Tensor, exp_avg_FD: torch.Tensor, exp_avg_sq_FD: torch.Tensor,
    step: torch.Tensor, lr: float, beta1: float, beta2: float, eps: float, project: bool, norm_eps: float,
) -> None:
    """Adam on unit-norm rows in one pass (see `_decoder_adam_kernel`); `step` is the already
    incremented step count, read on the device (a 0-dim tensor: no host sync)."""
    n_rows, d = W_FD.shape
    if n_rows == 0:
        return
    block_r, block_d = _row_blocks(d)
    _decoder_adam_kernel[(triton.cdiv(n_rows, block_r),)](
        W_FD, grad_FD, exp_avg_FD, exp_avg_sq_FD, step, n_rows, d, lr, beta1, beta2, eps, norm_eps,
        # 16 elements of each of the four tensors per thread: 8 warps for a 4096-element tile.
        PROJECT=project, BLOCK_R=block_r, BLOCK_D=block_d, num_warps=8,
    )
