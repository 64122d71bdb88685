"""Eager PyTorch twins of the sparse SAE kernels.

Each function here has a Triton counterpart with the same signature in `triton_ops.py`; the
dispatch module picks one set. These run on any device and are tuned for the CPU: the sparse
products go through CSR matrices (MKL-backed on x86) instead of gathering `[B, K, D]` tensors.

Shape suffixes: B batch, D d_in, F d_sae, K selected latents per row.
"""

from __future__ import annotations

import warnings

import torch

# CSR support is marked beta and warns once per process; the operations used here are stable.
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")


def _row_csr(idx_BK: torch.Tensor, vals_BK: torch.Tensor, n_cols: int) -> torch.Tensor:
    """A [B, n_cols] CSR matrix with row b holding vals_BK[b] at columns idx_BK[b]."""
    n_rows, k = idx_BK.shape
    crow = torch.arange(0, n_rows * k + 1, k, device=idx_BK.device, dtype=torch.int64)
    return torch.sparse_csr_tensor(
        crow, idx_BK.reshape(-1).to(torch.int64), vals_BK.reshape(-1), (n_rows, n_cols),
        check_invariants=False,
    )


def topk_select(
    pre_BF: torch.Tensor,
    b_enc_F: torch.Tensor,
    k: int,
    dead_F: torch.Tensor | None = None,
    k_aux: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-k of ReLU(pre + b_enc) per row, and optionally top-k_aux among dead latents.

    Returns (vals_BK, idx_BK, aux_vals_BA, aux_idx_BA): the k largest biased pre-activations of
    each row after ReLU (a value may be 0 when fewer than k are positive) and their latent
    indices, in no set order; then the same for the k_aux largest among latents where `dead_F`
    is True ([B, 0] tensors when `dead_F` is None or k_aux is 0). `pre_BF` is overwritten.
    """
    pre_BF.add_(b_enc_F.to(pre_BF.dtype))
    vals_BK, idx_BK = pre_BF.topk(k, dim=-1, sorted=False)
    vals_BK = vals_BK.relu_()
    if dead_F is None or k_aux == 0:
        empty = idx_BK[:, :0]
        return vals_BK, idx_BK, vals_BK[:, :0], empty
    pre_BF.masked_fill_(~dead_F, float("-inf"))
    aux_vals, aux_idx = pre_BF.topk(k_aux, dim=-1, sorted=False)
    # Fewer than k_aux dead latents leaves -inf entries: they become 0 and pass no gradient.
    return vals_BK, idx_BK, aux_vals.clamp_min_(0.0), aux_idx


def sparse_decode(
    vals_BK: torch.Tensor, idx_BK: torch.Tensor, W_dec_FD: torch.Tensor, out_dtype: torch.dtype | None = None
) -> torch.Tensor:
    """out[b] = sum_j vals[b, j] * W_dec[idx[b, j]]  ->  [B, D] in `out_dtype` (default W_dec's;
    no bias). A wider `out_dtype` than W_dec's also accumulates in it."""
    out_dtype = out_dtype or W_dec_FD.dtype
    W_FD = W_dec_FD if W_dec_FD.dtype == out_dtype else W_dec_FD.to(torch.promote_types(W_dec_FD.dtype, out_dtype))
    out_BD = torch.nn.functional.embedding_bag(idx_BK, W_FD, per_sample_weights=vals_BK.to(W_FD.dtype), mode="sum")
    return out_BD.to(out_dtype)


def sparse_decode_grad_vals(
    grad_out_BD: torch.Tensor, idx_BK: torch.Tensor, W_dec_FD: torch.Tensor, vals_BK: torch.Tensor | None = None
) -> torch.Tensor:
    """grad_vals[b, j] = <grad_out[b], W_dec[idx[b, j]]>  ->  [B, K]; 0 where vals_BK[b, j] == 0
    when `vals_BK` is given (inactive entries, whose gradient a ReLU would drop anyway)."""
    if grad_out_BD.device.type == "cpu" and grad_out_BD.dtype == W_dec_FD.dtype:
        pattern = _row_csr(idx_BK, torch.zeros(idx_BK.numel(), dtype=grad_out_BD.dtype), W_dec_FD.shape[0])
        sampled = torch.sparse.sampled_addmm(pattern, grad_out_BD, W_dec_FD.t(), beta=0.0)
        grad_BK = sampled.values().view(idx_BK.shape)
    else:
        grad_BK = torch.einsum("bkd,bd->bk", W_dec_FD[idx_BK].to(grad_out_BD.dtype), grad_out_BD)
    return grad_BK if vals_BK is None else grad_BK.masked_fill(vals_BK == 0, 0.0)


def sparse_outer(
    idx_BK: torch.Tensor, coef_BK: torch.Tensor, rows_BD: torch.Tensor, n_out: int
) -> torch.Tensor:
    """out[f] = sum over (b, j) with idx[b, j] == f of coef[b, j] * rows[b]  ->  [F, D].

    This is both the decoder-weight gradient (coef = vals, rows = grad_out) and the transposed
    encoder-weight gradient (coef = grad of the pre-activations, rows = the encoder input).
    On the CPU it is a CSR [F, B] @ [B, D] product, the CSR built by one argsort of the indices
    (transposing a [B, F] CSR instead costs a much slower generic conversion).
    """
    if rows_BD.device.type == "cpu" and rows_BD.dtype in (torch.bfloat16, torch.float16):
        # The CPU's sparse CSR product has no half-precision kernel: accumulate in fp32.
        return sparse_outer(idx_BK, coef_BK, rows_BD.float(), n_out).to(rows_BD.dtype)
    coef_BK = coef_BK.to(rows_BD.dtype)
    if rows_BD.device.type == "cpu":
        k = idx_BK.shape[1]
        flat = idx_BK.reshape(-1).to(torch.int64)
        order = torch.argsort(flat)
        crow = torch.zeros(n_out + 1, dtype=torch.int64)
        torch.cumsum(torch.bincount(flat, minlength=n_out), 0, out=crow[1:])
        mat_FB = torch.sparse_csr_tensor(crow, order // k, coef_BK.reshape(-1)[order], (n_out, idx_BK.shape[0]),
                                         check_invariants=False)
        return mat_FB @ rows_BD
    out_FD = torch.zeros(n_out, rows_BD.shape[1], dtype=rows_BD.dtype, device=rows_BD.device)
    src_BKD = coef_BK[:, :, None] * rows_BD[:, None, :]
    out_FD.index_add_(0, idx_BK.reshape(-1), src_BKD.reshape(-1, rows_BD.shape[1]))
    return out_FD


def sparse_input_grad(
    grad_pre_BK: torch.Tensor, idx_BK: torch.Tensor, W_enc_DF: torch.Tensor
) -> torch.Tensor:
    """grad_x[b] = sum_j grad_pre[b, j] * W_enc[:, idx[b, j]]  ->  [B, D]."""
    return sparse_decode(grad_pre_BK, idx_BK, W_enc_DF.t().contiguous())


def sparse_encoder_grad(
    x_BD: torch.Tensor, grad_pre_BK: torch.Tensor, idx_BK: torch.Tensor, d_sae: int,
    out_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(grad_W_enc [D, F], grad_b_enc [F]) for a pre-activation gradient with K non-zeros per row,
    in `out_dtype` (default x's dtype).

    grad_W_enc = x^T G and grad_b_enc = colsum(G), where G [B, F] holds grad_pre[b, j] at
    column idx[b, j]; G is never built densely.
    """
    out_dtype = out_dtype or x_BD.dtype
    acc = torch.promote_types(x_BD.dtype, torch.float32)  # accumulate in fp32 at least, as Triton does
    grad_W_FD = sparse_outer(idx_BK, grad_pre_BK, x_BD.to(acc), d_sae)
    grad_b_F = scatter_sum(idx_BK, grad_pre_BK.to(acc), d_sae)
    return grad_W_FD.t().to(out_dtype, memory_format=torch.contiguous_format), grad_b_F.to(out_dtype)


def scatter_sum(idx_BK: torch.Tensor, coef_BK: torch.Tensor, n_out: int) -> torch.Tensor:
    """out[f] = sum of coef[b, j] over idx[b, j] == f  ->  [F] (the encoder-bias gradient)."""
    out_F = torch.zeros(n_out, dtype=coef_BK.dtype, device=coef_BK.device)
    return out_F.index_add_(0, idx_BK.reshape(-1), coef_BK.reshape(-1))


def remove_parallel_grad_(W_dec_FD: torch.Tensor, grad_FD: torch.Tensor) -> None:
    """Project out of each decoder row's gradient its component along that (unit) row, in place.

    With rows kept at unit norm, the parallel component only changes the norm, which the
    renormalisation after the step undoes; removing it keeps Adam's moments clean.
    """
    dot_F = torch.einsum("fd,fd->f", grad_FD, W_dec_FD)
    grad_FD.sub_(dot_F[:, None] * W_dec_FD)


def normalize_rows_(W_dec_FD: torch.Tensor, eps: float = 1e-8) -> None:
    """Scale every decoder row to unit L2 norm, in place."""
    W_dec_FD.div_(W_dec_FD.norm(dim=1, keepdim=True).clamp_min_(eps))


def decoder_adam_step_(
    W_dec_FD: torch.Tensor, grad_FD: torch.Tensor, exp_avg_FD: torch.Tensor, exp_avg_sq_FD: torch.Tensor,
    step: torch.Tensor, lr: float, beta1: float, beta2: float, eps: float = 1e-8, project: bool = True,
    norm_eps: float = 1e-8,
) -> None:
    """One Adam step on unit-norm decoder rows, in place: remove the gradient's component along
    each row (`project`), update both moments and the rows as torch's Adam does (no weight decay),
    then rescale each row to unit norm. `step` is the 0-dim step count after incrementing.

    Equal to remove_parallel_grad_ + torch.optim.Adam + normalize_rows_, in one pass over the
    four [F, D] tensors instead of three passes (plus Adam's) in the fused Triton version.
    """
    g_FD = grad_FD
    if project:
        g_FD = grad_FD - torch.einsum("fd,fd->f", grad_FD, W_dec_FD)[:, None] * W_dec_FD
    exp_avg_FD.lerp_(g_FD, 1 - beta1)
    exp_avg_sq_FD.mul_(beta2).addcmul_(g_FD, g_FD, value=1 - beta2)
    step = step.to(torch.float32)
    bias1, bias2 = 1 - beta1**step, 1 - beta2**step
    denom_FD = (exp_avg_sq_FD.sqrt() / bias2.sqrt()).add_(eps)
    W_dec_FD.sub_(exp_avg_FD / denom_FD * (lr / bias1))
    normalize_rows_(W_dec_FD, norm_eps)


def _batch_candidates(pre_BF: torch.Tensor, k_total: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Global top-k_total of `pre_BF` as (values, flat positions), via per-row candidates.

    1. Each row's `cap` largest values (4x the mean share) are candidates; take the global
       top-k_total among them.
    2. A row all of whose candidates were chosen may own more winners: its whole row joins the
       candidates and the global top-k_total is taken again. The threshold can only rise, so the
       other rows' uncandidated values (below their chosen minimum) still cannot win: exact.
    A [B, cap] top-k plus small global ones is far cheaper than a top-k over all B * F values.
    """
    n_rows, d_sae = pre_BF.shape
    cap = min(d_sae, max(16, 4 * -(-k_total // n_rows)))
    cand_vals, cand_idx = pre_BF.topk(cap, dim=-1, sorted=False)
    vals, pos = cand_vals.reshape(-1).topk(k_total, sorted=False)
    rows = pos // cap
    full_B = torch.bincount(rows, minlength=n_rows) >= cap
    if cap == d_sae or not bool(full_B.any()):
        return vals, rows * d_sae + cand_idx.reshape(-1)[pos]
    row_ids = torch.arange(n_rows, device=pre_BF.device)
    part_rows = row_ids[~full_B]
    full_rows = row_ids[full_B]
    all_vals = torch.cat([cand_vals[part_rows].reshape(-1), pre_BF[full_rows].reshape(-1)])
    all_pos = torch.cat([(part_rows[:, None] * d_sae + cand_idx[part_rows]).reshape(-1),
                         (full_rows[:, None] * d_sae + torch.arange(d_sae, device=pre_BF.device)).reshape(-1)])
    vals, sel = all_vals.topk(k_total, sorted=False)
    return vals, all_pos[sel]


def batch_topk_select(
    pre_BF: torch.Tensor, b_enc_F: torch.Tensor, k_total: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The k_total largest of ReLU(pre + b_enc) over the whole batch (BatchTopK, Bussmann et al. 2024).

    Returns a padded per-row layout (vals_BK, idx_BK) with K = the largest per-row count; padded
    entries have value 0 and index 0, which adds nothing to a decode and passes no gradient.
    `pre_BF` is overwritten with pre + b_enc.
    """
    n_rows, d_sae = pre_BF.shape
    pre_BF.add_(b_enc_F.to(pre_BF.dtype))
    k_total = min(k_total, pre_BF.numel())
    flat_vals, flat_pos = _batch_candidates(pre_BF, k_total)
    keep = flat_vals > 0
    flat_vals, flat_pos = flat_vals[keep], flat_pos[keep]
    row, col = flat_pos // d_sae, flat_pos % d_sae
    counts_B = torch.bincount(row, minlength=n_rows)
    k_max = max(int(counts_B.max().item()) if counts_B.numel() else 0, 1)
    order = torch.argsort(row, stable=True)
    row, col, flat_vals = row[order], col[order], flat_vals[order]
    starts_B = torch.cumsum(counts_B, 0) - counts_B
    slot = torch.arange(row.numel(), device=row.device) - starts_B[row]
    vals_BK = torch.zeros(n_rows, k_max, dtype=pre_BF.dtype, device=pre_BF.device)
    idx_BK = torch.zeros(n_rows, k_max, dtype=torch.int64, device=pre_BF.device)
    vals_BK[row, slot] = flat_vals
    idx_BK[row, slot] = col
    return vals_BK, idx_BK
