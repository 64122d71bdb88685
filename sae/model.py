"""SparseAutoencoder: weights plus one pluggable activation.

    pre    = (x * s - b_dec) @ W_enc + b_enc           s: input scale (1 unless normalize_input)
    lat    = act(pre)                                  topk | batchtopk | jumprelu | relu
    recon  = (lat @ W_dec + b_dec) / s

TopK keeps the k largest ReLU'd pre-activations per token (Gao et al. 2024, "Scaling and
evaluating sparse autoencoders"); BatchTopK keeps the B*k largest over a batch and uses a
threshold estimated during training at inference (Bussmann et al. 2024); JumpReLU zeroes
pre-activations below a learned per-latent threshold (Rajamanoharan et al. 2024); ReLU is the
classic L1-penalised SAE. The TopK family trains through the sparse kernels of `sae_kernels`,
which never build a dense [B, F] gradient.
"""

from __future__ import annotations

from typing import NamedTuple

import sae_kernels
import torch
from torch import nn

from .config import SAEConfig


class ForwardOutput(NamedTuple):
    """What `SparseAutoencoder.forward` returns. Sparse activations (topk family) fill `vals_BK`
    and `idx_BK`; dense ones (relu, jumprelu) fill `latents_BF`. Tensors live in the normalised
    input space when `normalize_input` is on, except `recon_BD`, which is in the input's units."""

    recon_BD: torch.Tensor
    vals_BK: torch.Tensor | None
    idx_BK: torch.Tensor | None
    latents_BF: torch.Tensor | None
    aux_vals_BK: torch.Tensor | None
    aux_idx_BK: torch.Tensor | None
    pre_BF: torch.Tensor | None
    l0_B: torch.Tensor
    W_gather_FD: torch.Tensor | None = None
    """The low-precision copy of W_dec the sparse decodes read rows from (bf16 encoder), or None."""


class _JumpReLU(torch.autograd.Function):
    """z * H(z - theta); d/dtheta via the rectangle-kernel pseudo-derivative (bandwidth eps)."""

    @staticmethod
    def forward(ctx, pre_BF, threshold_F, eps):
        ctx.save_for_backward(pre_BF, threshold_F)
        ctx.eps = eps
        return pre_BF * (pre_BF > threshold_F)

    @staticmethod
    def backward(ctx, grad_BF):
        pre_BF, threshold_F = ctx.saved_tensors
        eps = ctx.eps
        grad_pre = grad_BF * (pre_BF > threshold_F)
        near_BF = ((pre_BF - threshold_F).abs() < eps / 2).to(grad_BF.dtype)
        grad_thr = -(threshold_F / eps) * (grad_BF * near_BF).sum(0)
        return grad_pre, grad_thr, None


class _Step(torch.autograd.Function):
    """H(z - theta), the JumpReLU L0; d/dtheta = -(1/eps) K((z - theta)/eps)."""

    @staticmethod
    def forward(ctx, pre_BF, threshold_F, eps):
        ctx.save_for_backward(pre_BF, threshold_F)
        ctx.eps = eps
        return (pre_BF > threshold_F).to(pre_BF.dtype)

    @staticmethod
    def backward(ctx, grad_BF):
        pre_BF, threshold_F = ctx.saved_tensors
        eps = ctx.eps
        near_BF = ((pre_BF - threshold_F).abs() < eps / 2).to(grad_BF.dtype)
        grad_thr = -(1.0 / eps) * (grad_BF * near_BF).sum(0)
        return None, grad_thr, None


def jumprelu_l0(pre_BF: torch.Tensor, threshold_F: torch.Tensor, eps: float) -> torch.Tensor:
    """Per-row count of latents above threshold, with a straight-through gradient for threshold."""
    return _Step.apply(pre_BF, threshold_F, eps).sum(-1)


class SparseAutoencoder(nn.Module):
    """A sparse autoencoder `W_enc [d_in, d_sae]`, `b_enc`, `W_dec [d_sae, d_in]`, `b_dec`."""

    def __init__(self, cfg: SAEConfig, device: torch.device | str | None = None,
                 dtype: torch.dtype = torch.float32, seed: int | None = 0):
        super().__init__()
        self.cfg = cfg
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        W_dec_FD = torch.randn(cfg.d_sae, cfg.d_in, generator=gen, dtype=torch.float32)
        W_dec_FD /= W_dec_FD.norm(dim=1, keepdim=True)
        self.W_dec = nn.Parameter(W_dec_FD.to(device=device, dtype=dtype))
        self.W_enc = nn.Parameter(self.W_dec.detach().t().clone().contiguous())
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae, device=device, dtype=dtype))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in, device=device, dtype=dtype))
        if cfg.activation == "jumprelu":
            init = torch.full((cfg.d_sae,), cfg.jumprelu_init_threshold, device=device, dtype=dtype)
            self.log_threshold = nn.Parameter(init.log())
        # BatchTopK inference threshold, estimated while training (a running mean of the
        # smallest value kept per batch).
        self.register_buffer("threshold", torch.zeros((), device=device, dtype=dtype))
        self.register_buffer("input_scale", torch.ones((), device=device, dtype=dtype))

    @property
    def d_in(self) -> int:
        return self.cfg.d_in

    @property
    def d_sae(self) -> int:
        return self.cfg.d_sae

    def jumprelu_threshold(self) -> torch.Tensor:
        """Per-latent JumpReLU threshold [F]."""
        return self.log_threshold.exp()

    # -- encoder ---------------------------------------------------------------------------------

    def _center(self, x_BD: torch.Tensor) -> torch.Tensor:
        x_BD = x_BD.to(self.W_enc.dtype)
        return x_BD * self.input_scale - self.b_dec

    def pre_acts(self, x_BD: torch.Tensor) -> torch.Tensor:
        """Biased pre-activations [B, F] (dense)."""
        return self._center(x_BD) @ self.W_enc + self.b_enc

    def encode(self, x_BD: torch.Tensor) -> torch.Tensor:
        """Dense latents [B, F] at inference (BatchTopK uses its estimated threshold)."""
        pre_BF = self.pre_acts(x_BD)
        act = self.cfg.activation
        if act == "topk":
            vals_BK, idx_BK = pre_BF.topk(self.cfg.k, dim=-1)
            return torch.zeros_like(pre_BF).scatter_(-1, idx_BK, vals_BK.relu())
        if act == "batchtopk":
            return pre_BF * (pre_BF > self.threshold.clamp_min(0))
        if act == "jumprelu":
            return pre_BF * (pre_BF > self.jumprelu_threshold())
        return pre_BF.relu()

    def encode_sparse(self, x_BD: torch.Tensor) -> sae_kernels.SparseCode:
        """TopK latents as (vals_BK, idx_BK) without a dense [B, F] result (topk only)."""
        if self.cfg.activation != "topk":
            raise ValueError(f"encode_sparse needs activation topk, this SAE is {self.cfg.activation}.")
        return sae_kernels.topk_encode(self._center(x_BD), self.W_enc, self.b_enc, self.cfg.k)

    # -- decoder ---------------------------------------------------------------------------------

    def decode(self, latents_BF: torch.Tensor) -> torch.Tensor:
        """Reconstruction [B, D] in input units from dense latents."""
        return (latents_BF.to(self.W_dec.dtype) @ self.W_dec + self.b_dec) / self.input_scale

    def decode_sparse(self, vals_BK: torch.Tensor, idx_BK: torch.Tensor) -> torch.Tensor:
        """Reconstruction [B, D] in input units from (vals, idx)."""
        return sae_kernels.sparse_decode(vals_BK, idx_BK, self.W_dec, self.b_dec) / self.input_scale

    # -- training forward ------------------------------------------------------------------------

    def forward(self, x_BD: torch.Tensor, dead_F: torch.Tensor | None = None,
                k_aux: int = 0, encoder_dtype: torch.dtype | None = None) -> ForwardOutput:
        """Training forward pass. `dead_F`/`k_aux` ask the topk family for the AuxK selection;
        `encoder_dtype` (e.g. bfloat16) is the dtype of the encoder GEMM's inputs, whose result
        the selection reads, and of the decoder rows the sparse decodes gather; accumulation,
        the loss and every gradient stay in the weights' dtype."""
        act = self.cfg.activation
        enc_dtype = encoder_dtype or self.W_enc.dtype
        xs_BD = x_BD.to(self.W_enc.dtype) * self.input_scale
        if act in ("topk", "batchtopk"):
            # b_dec goes in separately: its gradient then costs one GEMV, not a [B, D] input gradient.
            code = sae_kernels.topk_encode(
                xs_BD, self.W_enc, self.b_enc, self.cfg.k, dead_F, k_aux,
                per_batch=act == "batchtopk", b_dec_D=self.b_dec, compute_dtype=enc_dtype,
            )
            # Under a bf16 encoder the decodes read their rows from one bf16 copy per step (fp32
            # accumulation, fp32 W_dec gradient): half the bytes of the step's largest gathers.
            W_gather = None if enc_dtype == self.W_dec.dtype else self.W_dec.detach().to(enc_dtype)
            recon_BD = sae_kernels.sparse_decode(code.vals_BK, code.idx_BK, self.W_dec, self.b_dec, W_gather,
                                                 zero_is_inactive=True)
            l0_B = (code.vals_BK > 0).sum(-1)
            return ForwardOutput(recon_BD / self.input_scale, code.vals_BK, code.idx_BK, None,
                                 code.aux_vals_BK, code.aux_idx_BK, None, l0_B, W_gather)
        xc_BD = (xs_BD - self.b_dec.detach()).to(enc_dtype)  # centred before any cast
        pre_BF = (xc_BD @ self.W_enc.to(enc_dtype)).to(self.W_enc.dtype) + self.b_enc
        # Exactly zero in value; its gradient gives b_dec its share, -(sum_b grad_pre) @ W_enc^T,
        # by one GEMV instead of autograd's [B, D] gradient of the centred input.
        pre_BF = pre_BF + (self.b_dec.detach() - self.b_dec) @ self.W_enc.detach()
        if act == "jumprelu":
            latents_BF = _JumpReLU.apply(pre_BF, self.jumprelu_threshold(), self.cfg.jumprelu_bandwidth)
        else:
            latents_BF = pre_BF.relu()
        recon_BD = latents_BF @ self.W_dec + self.b_dec
        l0_B = (latents_BF > 0).sum(-1)
        return ForwardOutput(recon_BD / self.input_scale, None, None, latents_BF, None, None,
                             pre_BF, l0_B)

    # -- weight helpers --------------------------------------------------------------------------

    @torch.no_grad()
    def set_decoder_norm_to_unit_(self) -> None:
        sae_kernels.normalize_rows_(self.W_dec.data)

    @torch.no_grad()
    def remove_parallel_decoder_grad_(self) -> None:
        if self.W_dec.grad is not None:
            sae_kernels.remove_parallel_grad_(self.W_dec.data, self.W_dec.grad)

    @torch.no_grad()
    def calibrate_threshold_(self, x_ND: torch.Tensor) -> float:
        """Set the BatchTopK inference threshold so that, on `x_ND`, rows keep k latents on average.

        The threshold is the (N*k)-th largest ReLU'd pre-activation of the sample, i.e. exactly the
        cut BatchTopK would make if the whole sample were one batch.
        """
        if self.cfg.activation != "batchtopk":
            raise ValueError("calibrate_threshold_ applies to batchtopk SAEs only.")
        pre = self.pre_acts(x_ND).relu().flatten()
        n_keep = min(pre.numel(), x_ND.shape[0] * self.cfg.k)
        self.threshold.fill_(pre.topk(n_keep, sorted=False).values.min().item())
        return float(self.threshold)

    @torch.no_grad()
    def folded_state(self) -> dict[str, torch.Tensor]:
        """Weights with the input scale folded in (so inputs need no scaling), as plain tensors.

        (x s - b_dec) W_enc = (x - b_dec/s)(s W_enc) and (lat W_dec + b_dec)/s = lat (W_dec/s) + b_dec/s.
        """
        s = self.input_scale
        state = {
            "W_enc": self.W_enc * s,
            "b_enc": self.b_enc.clone(),
            "W_dec": self.W_dec / s,
            "b_dec": self.b_dec / s,
        }
        if self.cfg.activation == "jumprelu":
            state["threshold"] = self.jumprelu_threshold().clone()
        if self.cfg.activation == "batchtopk":
            state["threshold"] = self.threshold.expand(self.cfg.d_sae).clone()
        return {k: v.detach().contiguous() for k, v in state.items()}
