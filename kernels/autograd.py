"""Autograd wrappers: a sparse top-k encoder and a sparse decoder whose backward passes never
materialise a dense [B, F] tensor.

Encoder (forward): pre = x @ W_enc (one dense GEMM), then the backend's fused bias + top-k + ReLU
selection, optionally with a second top-k restricted to dead latents (AuxK, Gao et al. 2024).
Encoder (backward): the pre-activation gradient is non-zero only at the selected entries, so
grad W_enc = x^T G and grad b_enc = colsum(G) are computed from the K entries per row, and the
decoder bias subtracted at the input gets -W_enc @ colsum(G).
Decoder: out = sum_j vals[b, j] W_dec[idx[b, j]] + b_dec, backward by a sampled product for the
values and a sparse outer product for the used W_dec rows.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .dispatch import ops_for


class SparseCode(NamedTuple):
    """Selected latents: `vals_BK` (post-ReLU values) at `idx_BK`; `aux_*` the AuxK selection
    among dead latents (empty [B, 0] tensors when not asked for)."""

    vals_BK: torch.Tensor
    idx_BK: torch.Tensor
    aux_vals_BK: torch.Tensor
    aux_idx_BK: torch.Tensor


class _TopKEncode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_BD, W_enc_DF, b_enc_F, k, dead_F, k_aux, per_batch, b_dec_D, compute_dtype):
        ops = ops_for(x_BD)
        # Centre first, then cast: rounding an uncentred x to bf16 would lose the small centred
        # signal of dimensions with a large mean.
        xc_BD = (x_BD if b_dec_D is None else x_BD - b_dec_D).to(compute_dtype or x_BD.dtype)
        pre_BF = xc_BD @ W_enc_DF.to(xc_BD.dtype)
        if per_batch:
            vals_BK, idx_BK = ops.batch_topk_select(pre_BF, b_enc_F, k * x_BD.shape[0])
            aux_vals, aux_idx = vals_BK[:, :0], idx_BK[:, :0]
            if dead_F is not None:
                _, _, aux_vals, aux_idx = ops.topk_select(pre_BF, b_enc_F * 0, 1, dead_F, k_aux)
        else:
            vals_BK, idx_BK, aux_vals, aux_idx = ops.topk_select(pre_BF, b_enc_F, k, dead_F, k_aux)
        ctx.save_for_backward(xc_BD, W_enc_DF, vals_BK, idx_BK, aux_vals, aux_idx)
        ctx.d_sae = W_enc_DF.shape[1]
        ctx.mark_non_differentiable(idx_BK, aux_idx)
        return vals_BK, idx_BK, aux_vals, aux_idx

    @staticmethod
    def backward(ctx, g_vals, _g_idx, g_aux, _g_aux_idx):
        xc_BD, W_enc_DF, vals_BK, idx_BK, aux_vals, aux_idx = ctx.saved_tensors
        ops = ops_for(xc_BD)
        g_pre_BK, all_idx_BK = _pre_act_grad(g_vals, g_aux, vals_BK, idx_BK, aux_vals, aux_idx)
        need_x, need_W, need_b, need_b_dec = (ctx.needs_input_grad[i] for i in (0, 1, 2, 7))
        grad_x = grad_W = grad_b = grad_b_dec = None
        if need_W or need_b or need_b_dec:
            # Written straight in the weights' dtype (fp32 master weights under bf16 inputs).
            grad_W, grad_b = ops.sparse_encoder_grad(xc_BD, g_pre_BK, all_idx_BK, ctx.d_sae, W_enc_DF.dtype)
        if need_b_dec:
            # sum_b grad_xc[b] = W_enc @ colsum(G) = W_enc @ grad_b_enc: one GEMV over W_enc
            # instead of the [B, D] input gradient.
            grad_b_dec = -(W_enc_DF @ grad_b)
        if need_x:
            grad_x = ops.sparse_input_grad(g_pre_BK, all_idx_BK, W_enc_DF)
        return (grad_x, grad_W if need_W else None, grad_b if need_b else None, None, None, None, None, grad_b_dec,
                None)


def _pre_act_grad(
    g_vals: torch.Tensor | None, g_aux: torch.Tensor | None, vals_BK: torch.Tensor, idx_BK: torch.Tensor,
    aux_vals: torch.Tensor, aux_idx: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The pre-activation gradient at the selected entries (TopK and AuxK side by side) and their
    latent indices. Entries selected with value 0 pass no gradient (ReLU)."""
    if g_vals is None:  # only the AuxK output reached the loss
        g_vals = torch.zeros_like(vals_BK)
    grads = [torch.where(vals_BK > 0, g_vals, 0.0)]
    idxs = [idx_BK]
    if aux_idx.shape[1] > 0 and g_aux is not None:
        grads.append(torch.where(aux_vals > 0, g_aux, 0.0))
        idxs.append(aux_idx)
    if len(grads) == 1:
        return grads[0], idxs[0]
    return torch.cat(grads, 1), torch.cat(idxs, 1)


class _SparseDecode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, vals_BK, idx_BK, W_dec_FD, b_dec_D, W_gather_FD, zero_is_inactive):
        W_src = W_dec_FD if W_gather_FD is None else W_gather_FD
        ops = ops_for(W_src)
        ctx.save_for_backward(vals_BK, idx_BK, W_src)
        ctx.n_latents, ctx.zero_is_inactive = W_dec_FD.shape[0], zero_is_inactive
        return ops.sparse_decode(vals_BK, idx_BK, W_src, W_dec_FD.dtype) + b_dec_D

    @staticmethod
    def backward(ctx, grad_out_BD):
        vals_BK, idx_BK, W_src = ctx.saved_tensors
        ops = ops_for(W_src)
        grad_out_BD = grad_out_BD.contiguous()
        grad_vals = grad_W = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_vals = ops.sparse_decode_grad_vals(grad_out_BD, idx_BK, W_src,
                                                    vals_BK if ctx.zero_is_inactive else None)
        if ctx.needs_input_grad[2]:
            grad_W = ops.sparse_outer(idx_BK, vals_BK, grad_out_BD, ctx.n_latents)
        if ctx.needs_input_grad[3]:
            grad_b = grad_out_BD.sum(0)
        return grad_vals, None, grad_W, grad_b, None, None


def topk_encode(
    x_BD: torch.Tensor,
    W_enc_DF: torch.Tensor,
    b_enc_F: torch.Tensor,
    k: int,
    dead_F: torch.Tensor | None = None,
    k_aux: int = 0,
    per_batch: bool = False,
    b_dec_D: torch.Tensor | None = None,
    compute_dtype: torch.dtype | None = None,
) -> SparseCode:
    """Sparse TopK encoder: the k largest of ReLU((x - b_dec) @ W_enc + b_enc) per row.

    With `per_batch` (BatchTopK) the B*k largest over the whole batch instead, in a padded
    [B, K_max] layout whose padding has value 0. With `dead_F` (bool [F]) and `k_aux > 0` also
    returns the k_aux largest among dead latents, from the same pre-activations.
    `b_dec_D` (optional) is subtracted here, in x's dtype: passing it instead of a centred x
    lets the backward get b_dec's gradient from one GEMV (W_enc @ grad b_enc) and skip the
    [B, D] input gradient when x itself needs none (training on data). `compute_dtype` (default
    x's) is the GEMM's input dtype, e.g. bf16 with fp32 weights: x - b_dec is formed before the
    cast.
    Differentiable w.r.t. x, W_enc, b_enc and b_dec.
    """
    if not 1 <= k <= W_enc_DF.shape[1]:
        raise ValueError(f"k must be in [1, d_sae={W_enc_DF.shape[1]}], got {k}.")
    if dead_F is None or k_aux <= 0:
        dead_F, k_aux = None, 0
    else:
        k_aux = min(k_aux, W_enc_DF.shape[1])
    return SparseCode(*_TopKEncode.apply(x_BD, W_enc_DF, b_enc_F, k, dead_F, k_aux, per_batch, b_dec_D,
                                         compute_dtype))


def sparse_decode(
    vals_BK: torch.Tensor, idx_BK: torch.Tensor, W_dec_FD: torch.Tensor, b_dec_D: torch.Tensor,
    W_gather_FD: torch.Tensor | None = None,
    zero_is_inactive: bool = False,
) -> torch.Tensor:
    """out[b] = sum_j vals[b, j] * W_dec[idx[b, j]] + b_dec, in W_dec's dtype. Differentiable
    w.r.t. vals, W_dec, b_dec.

    `W_gather_FD`, a lower-precision copy of W_dec (e.g. bf16 under fp32 master weights), is
    where the rows are read from, in the forward and for the values' gradient: half the bytes of
    the step's two largest gathers. Accumulation and W_dec's own gradient are unaffected.
    `zero_is_inactive`: values of exactly 0 are inactive (ReLU outputs such as `topk_encode`'s,
    padding), so their value gradient is returned as 0 without reading their rows. With AuxK's
    [B, k_aux] selections, mostly zeros, this skips most of the backward's reads.
    """
    return _SparseDecode.apply(vals_BK, idx_BK, W_dec_FD, b_dec_D, W_gather_FD, zero_is_inactive)
