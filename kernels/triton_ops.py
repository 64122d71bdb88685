"""Triton implementations of the sparse SAE kernels, with the signatures of `eager.py`.

The dispatch module returns this module for CUDA tensors (or for CPU tensors under
`TRITON_INTERPRET=1` with `SAE_KERNELS=triton`). Every function matches its eager twin's
arguments, output shapes and dtypes; selections come back unordered and ties may resolve to other
latents. Algorithms are described in `_triton_select.py` (selection) and `_triton_sparse.py`
(sparse products, decoder row maintenance).

One documented difference: `topk_select` does not write pre + b_enc back into `pre_BF` (that
would double its memory traffic); `batch_topk_select` does, as the eager twin does.

Variable sparsity per row (BatchTopK, JumpReLU) uses a padded [B, Kmax] layout: padded entries
have value 0 and any valid latent index; every function here treats them as absent.

Shape suffixes: B batch, D d_in, F d_sae, K selected latents per row.
"""

from __future__ import annotations

import torch

from . import _triton_select as select
from . import _triton_sparse as sparse
from . import eager
from .eager import scatter_sum

__all__ = [
    "batch_topk_select",
    "decoder_adam_step_",
    "normalize_rows_",
    "remove_parallel_grad_",
    "scatter_sum",
    "sparse_decode",
    "sparse_decode_grad_vals",
    "sparse_encoder_grad",
    "sparse_input_grad",
    "sparse_outer",
    "topk_select",
]


def topk_select(
    pre_BF: torch.Tensor,
    b_enc_F: torch.Tensor,
    k: int,
    dead_F: torch.Tensor | None = None,
    k_aux: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-k of ReLU(pre + b_enc) per row, and top-k_aux among `dead_F` latents, in one read.

    Returns (vals_BK, idx_BK, aux_vals_BA, aux_idx_BA) like the eager twin ([B, 0] aux tensors
    when `dead_F` is None or k_aux is 0). `pre_BF` is left unchanged.
    """
    if dead_F is None or k_aux == 0:
        vals_BK, idx_BK, _, _ = select.row_topk(pre_BF, k, b_enc_F)
        return vals_BK, idx_BK, vals_BK[:, :0], idx_BK[:, :0]
    return select.row_topk(pre_BF, k, b_enc_F, dead_F.contiguous(), k_aux)


def batch_topk_select(
    pre_BF: torch.Tensor, b_enc_F: torch.Tensor, k_total: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The k_total largest of ReLU(pre + b_enc) over the batch, padded per row to the largest
    per-row count (padding: value 0, index 0). `pre_BF` is overwritten with pre + b_enc."""
    return select.batch_topk(pre_BF, b_enc_F, k_total)


def sparse_decode(
    vals_BK: torch.Tensor, idx_BK: torch.Tensor, W_dec_FD: torch.Tensor, out_dtype: torch.dtype | None = None
) -> torch.Tensor:
    """out[b] = sum_j vals[b, j] * W_dec[idx[b, j]]  ->  [B, D] in `out_dtype` (default W_dec's;
    no bias), accumulated in fp32. Zero values read no row."""
    return sparse.decode(vals_BK, idx_BK, W_dec_FD, out_dtype or W_dec_FD.dtype)


def sparse_decode_grad_vals(
    grad_out_BD: torch.Tensor, idx_BK: torch.Tensor, W_dec_FD: torch.Tensor, vals_BK: torch.Tensor | None = None
) -> torch.Tensor:
    """grad_vals[b, j] = <grad_out[b], W_dec[idx[b, j]]>  ->  [B, K] in grad_out's dtype; 0 (no
    row read) where vals_BK[b, j] == 0 when `vals_BK` is given."""
    return sparse.grad_vals(grad_out_BD, idx_BK, W_dec_FD, vals_BK)


def sparse_outer(
    idx_BK: torch.Tensor, coef_BK: torch.Tensor, rows_BD: torch.Tensor, n_out: int
) -> torch.Tensor:
    """out[f] = sum over (b, j) with idx[b, j] == f of coef[b, j] * rows[b]  ->  [F, D]."""
    out_FD, _ = sparse.segment_outer(idx_BK, coef_BK, rows_BD, n_out)
    return out_FD


def sparse_input_grad(
    grad_pre_BK: torch.Tensor, idx_BK: torch.Tensor, W_enc_DF: torch.Tensor
) -> torch.Tensor:
    """grad_x[b] = sum_j grad_pre[b, j] * W_enc[:, idx[b, j]]  ->  [B, D] in W_enc's dtype."""
    # Gathering columns of W_enc reads one 32-byte sector per element; one transposed copy
    # (2 * D * F elements) is cheaper than that for any batch of more than a few rows.
    return sparse.decode(grad_pre_BK, idx_BK, W_enc_DF.t().contiguous(), W_enc_DF.dtype)


def sparse_encoder_grad(
    x_BD: torch.Tensor, grad_pre_BK: torch.Tensor, idx_BK: torch.Tensor, d_sae: int,
    out_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(grad_W_enc [D, F], grad_b_enc [F]) in `out_dtype` (default x's): x^T G and colsum(G),
    where G [B, F] holds grad_pre[b, j] at column idx[b, j]; written in [D, F] layout by one
    segmented pass that accumulates in fp32 whatever the dtypes."""
    grad_W_DF, grad_b_F = sparse.segment_outer(
        idx_BK, grad_pre_BK, x_BD, d_sae, transposed=True, with_colsum=True, out_dtype=out_dtype
    )
    assert grad_b_F is not None
    return grad_W_DF, grad_b_F


def remove_parallel_grad_(W_dec_FD: torch.Tensor, grad_FD: torch.Tensor) -> None:
    """grad[f] -= <grad[f], W_dec[f]> W_dec[f] in place, for unit-norm decoder rows."""
    _check_rows(W_dec_FD, grad_FD)
    sparse.remove_parallel_(W_dec_FD, grad_FD)


def normalize_rows_(W_dec_FD: torch.Tensor, eps: float = 1e-8) -> None:
    """Scale every decoder row to unit L2 norm (norms clamped at eps), in place."""
    _check_rows(W_dec_FD)
    sparse.normalize_(W_dec_FD, eps)


def decoder_adam_step_(
    W_dec_FD: torch.Tensor, grad_FD: torch.Tensor, exp_avg_FD: torch.Tensor, exp_avg_sq_FD: torch.Tensor,
    step: torch.Tensor, lr: float, beta1: float, beta2: float, eps: float = 1e-8, project: bool = True,
    norm_eps: float = 1e-8,
) -> None:
    """Projection, Adam and renormalisation of unit-norm decoder rows in one pass (eager twin's
    doc). The four tensors must be contiguous fp32 [F, D]; other layouts take the eager twin."""
    tensors = (W_dec_FD, grad_FD, exp_avg_FD, exp_avg_sq_FD)
    _check_rows(*tensors)
    if not all(t.is_contiguous() and t.dtype == torch.float32 for t in tensors):
        eager.decoder_adam_step_(*tensors, step, lr, beta1, beta2, eps, project, norm_eps)
        return
    sparse.decoder_adam_(*tensors, step, lr, beta1, beta2, eps, project, norm_eps)


def _check_rows(*tensors: torch.Tensor) -> None:
    for t in tensors:
        if t.dim() != 2:
            raise ValueError(
                f"expected a 2-D [d_sae, d_in] tensor, got shape {tuple(t.shape)}; pass W_dec "
                "and its gradient as stored."
            )
