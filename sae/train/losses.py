"""Training losses of the four activations.

All reconstruction terms are computed in the SAE's normalised input space (x * input_scale), so
the loss scale does not depend on the model's activation norms.
  - MSE: mean over rows of ||x - recon||^2.
  - AuxK (topk family; Gao et al. 2024, sec. A.2): reconstruct the detached residual x - recon
    from the k_aux largest dead latents; normalised by the residual's variance.
  - L1 (relu): mean over rows of sum_f |lat_f| * ||W_dec[f]||.
  - L0 (jumprelu): mean over rows of the number of active latents, with the threshold's
    straight-through gradient (Rajamanoharan et al. 2024).
"""

from __future__ import annotations

from typing import NamedTuple

import sae_kernels
import torch

from ..model import ForwardOutput, SparseAutoencoder, jumprelu_l0


class LossParts(NamedTuple):
    """The total loss and its detached parts (0-dim tensors, no host sync)."""

    total: torch.Tensor
    mse: torch.Tensor
    aux: torch.Tensor
    sparsity: torch.Tensor
    fvu: torch.Tensor


def compute_loss(sae: SparseAutoencoder, x_BD: torch.Tensor, out: ForwardOutput, aux_coef: float,
                 sparsity_coef: float, aux_active: torch.Tensor | None = None) -> LossParts:
    """Total loss for one batch (see the module docstring).

    `aux_active` (a 0-dim tensor, 0 or 1) switches the AuxK term off without a host sync when
    the AuxK selection ran over a mask with no dead latents.
    """
    scale = sae.input_scale
    err_BD = (out.recon_BD - x_BD) * scale
    sq_err_B = err_BD.pow(2).sum(-1)
    mse = sq_err_B.mean()
    centered = ((x_BD - x_BD.mean(0)) * scale).pow(2).sum()
    fvu = sq_err_B.sum().detach() / centered.clamp_min(1e-12).detach()
    zero = mse.new_zeros(())
    aux = sparsity = zero
    if out.aux_idx_BK is not None and out.aux_idx_BK.shape[1] > 0:
        aux = auxk_loss(sae, err_BD.detach(), out.aux_vals_BK, out.aux_idx_BK, out.W_gather_FD)
        if aux_active is not None:
            aux = aux * aux_active
    if sae.cfg.activation == "relu":
        sparsity = (out.latents_BF * sae.W_dec.norm(dim=1)).sum(-1).mean()
    elif sae.cfg.activation == "jumprelu":
        sparsity = jumprelu_l0(out.pre_BF, sae.jumprelu_threshold(), sae.cfg.jumprelu_bandwidth).mean()
    total = mse + aux_coef * aux + sparsity_coef * sparsity
    return LossParts(total, mse.detach(), aux.detach(), sparsity.detach(), fvu)


def auxk_loss(sae: SparseAutoencoder, neg_residual_BD: torch.Tensor, aux_vals_BK: torch.Tensor,
              aux_idx_BK: torch.Tensor, W_gather_FD: torch.Tensor | None = None) -> torch.Tensor:
    """||r - W_dec z_aux||^2 / ||r - mean r||^2 with r = x - recon (given as recon - x); rows
    read from `W_gather_FD` when given (see `sae_kernels.sparse_decode`)."""
    residual_BD = -neg_residual_BD
    zero_D = torch.zeros_like(sae.b_dec)
    # AuxK values are ReLU outputs, mostly 0 while few latents are dead: skip their rows.
    aux_recon_BD = sae_kernels.sparse_decode(aux_vals_BK, aux_idx_BK, sae.W_dec, zero_D, W_gather_FD,
                                             zero_is_inactive=True)
    num = (aux_recon_BD - residual_BD).pow(2).sum()
    den = (residual_BD - residual_BD.mean(0)).pow(2).sum().clamp_min(1e-12)
    return num / den
