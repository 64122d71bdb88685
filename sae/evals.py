"""Evaluations of a trained SAE.

1. On activations (`sparsity_metrics`): L0 (mean active latents per token), FVU = sum||x - x^||^2 /
   sum||x - mean(x)||^2 and explained variance 1 - FVU, dead fraction (latents that never fire on
   the set), dense fraction (latents firing on more than 10% of tokens), per-latent firing density.
2. Spliced into the model (`evaluate_on_text`): the next-token cross-entropy with the hook's
   activations replaced by the SAE reconstruction, against the clean model and against zero
   ablation of the same positions; "CE loss recovered" = (CE_zero - CE_sae) / (CE_zero - CE_clean),
   and the KL divergence KL(clean || spliced) per token. BOS and pad positions are left untouched
   and padding targets are ignored.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from .activations import Harvester, pack_blocks, validate_hooks
from .lm import LoadedModel
from .model import SparseAutoencoder

DENSE_FREQ = 0.1


@dataclass
class SparsityStats:
    """Reconstruction and sparsity of an SAE on a set of activations."""

    l0: float
    fvu: float
    explained_variance: float
    mse: float
    dead_frac: float
    dense_frac: float
    n_rows: int
    density_F: torch.Tensor
    """Fraction of rows on which each latent fires."""

    def summary(self) -> dict[str, float]:
        return {"l0": self.l0, "fvu": self.fvu, "explained_variance": self.explained_variance,
                "mse": self.mse, "dead_frac": self.dead_frac, "dense_frac": self.dense_frac,
                "n_rows": self.n_rows}

    def save_density(self, path: Path) -> None:
        path.write_text(json.dumps({"density": self.density_F.tolist(), "n_rows": self.n_rows}))


@torch.no_grad()
def sparsity_metrics(sae: SparseAutoencoder, acts_ND: torch.Tensor, batch: int = 4096) -> SparsityStats:
    """L0, FVU, dead/dense fractions and firing densities over `acts_ND` (rows of the SAE's hook)."""
    device = sae.W_enc.device
    acts_ND = acts_ND[torch.isfinite(acts_ND).all(-1)]
    if acts_ND.shape[0] == 0:
        raise ValueError("No finite activation rows to evaluate on.")
    mean_D = acts_ND.double().mean(0).to(device)
    sq_err = total_var = 0.0
    fires_F = torch.zeros(sae.d_sae, dtype=torch.int64, device=device)
    for start in range(0, acts_ND.shape[0], batch):
        x_BD = acts_ND[start:start + batch].to(device, torch.float32)
        latents_BF = sae.encode(x_BD)
        recon_BD = sae.decode(latents_BF)
        sq_err += (recon_BD - x_BD).double().pow(2).sum().item()
        total_var += (x_BD.double() - mean_D).pow(2).sum().item()
        fires_F += (latents_BF > 0).sum(0)
    n = acts_ND.shape[0]
    density_F = (fires_F.double() / n).float().cpu()
    fvu = sq_err / max(total_var, 1e-30)
    return SparsityStats(l0=fires_F.sum().item() / n, fvu=fvu, explained_variance=1.0 - fvu,
                         mse=sq_err / (n * acts_ND.shape[1]), dead_frac=float((fires_F == 0).float().mean()),
                         dense_frac=float((density_F > DENSE_FREQ).float().mean()), n_rows=n,
                         density_F=density_F)


@dataclass
class EvalResult:
    """Evals of an SAE spliced into its model on held-out text."""

    l0: float
    fvu: float
    dead_frac: float
    dense_frac: float
    ce_loss_clean: float
    ce_loss_sae: float
    ce_loss_zero: float
    ce_loss_recovered: float
    kl: float
    """Mean per-token KL(clean || SAE-spliced), nats."""
    kl_zero: float
    """Mean per-token KL(clean || zero-ablated), nats."""
    n_tokens: int
    hook: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _masked_ce_kl(logits_NTV: torch.Tensor, clean_logp_NTV: torch.Tensor, tokens_NT: torch.Tensor,
                  target_NT: torch.Tensor) -> tuple[float, float]:
    """Summed CE over target positions, and summed KL(clean || this)."""
    logp = logits_NTV[:, :-1].float().log_softmax(-1)
    targets = tokens_NT[:, 1:]
    ce = -logp.gather(-1, targets[..., None]).squeeze(-1)[target_NT].sum()
    clean = clean_logp_NTV
    kl = (clean.exp() * (clean - logp)).sum(-1)[target_NT].sum()
    return float(ce), float(kl)


@torch.no_grad()
def evaluate_on_text(sae: SparseAutoencoder, model: LoadedModel, source: str, n_tokens: int = 8192,
                     context: int = 128, batch: int = 8, hook: str | None = None, text_field: str = "text",
                     progress: bool = True) -> EvalResult:
    """Splice `sae` into `model` at `hook` over `n_tokens` of `source` (see the module docstring)."""
    from tqdm.auto import tqdm

    hook = hook or sae.cfg.hook_name
    if not hook:
        raise ValueError("The SAE does not name its hook; pass --hook.")
    validate_hooks(model, [hook])
    blocks = pack_blocks(source, model.tokenizer, context, n_tokens, text_field=text_field)
    harvester = Harvester(model, [hook])
    sums = dict(ce_clean=0.0, ce_sae=0.0, ce_zero=0.0, kl=0.0, kl_zero=0.0, n=0)
    acts: list[torch.Tensor] = []
    bar = tqdm(total=blocks.n_rows, unit="tok", unit_scale=True, desc="eval", disable=not progress)
    for start in range(0, blocks.tokens_NT.shape[0], batch):
        toks_NT = blocks.tokens_NT[start:start + batch].to(model.device)
        keep_NT = blocks.keep_NT[start:start + batch].to(model.device)
        acts_NTD = harvester.run(toks_NT)[hook]
        acts.append(acts_NTD[keep_NT].float().cpu())
        _accumulate(sums, sae, model, hook, toks_NT, keep_NT, acts_NTD)
        bar.update(int(keep_NT.sum()))
    bar.close()
    stats = sparsity_metrics(sae, torch.cat(acts))
    n = max(sums["n"], 1)
    ce_clean, ce_sae, ce_zero = sums["ce_clean"] / n, sums["ce_sae"] / n, sums["ce_zero"] / n
    denom = ce_zero - ce_clean
    recovered = (ce_zero - ce_sae) / denom if abs(denom) > 1e-9 else float("nan")
    return EvalResult(l0=stats.l0, fvu=stats.fvu, dead_frac=stats.dead_frac, dense_frac=stats.dense_frac,
                      ce_loss_clean=ce_clean, ce_loss_sae=ce_sae, ce_loss_zero=ce_zero,
                      ce_loss_recovered=recovered, kl=sums["kl"] / n, kl_zero=sums["kl_zero"] / n,
                      n_tokens=int(sums["n"]), hook=hook)


def _accumulate(sums: dict[str, float], sae: SparseAutoencoder, model: LoadedModel, hook: str,
                toks_NT: torch.Tensor, keep_NT: torch.Tensor, acts_NTD: torch.Tensor) -> None:
    bridge = model.bridge
    recon_ND = sae.decode(sae.encode(acts_NTD[keep_NT]))
    # Targets: next tokens that are real text (not pad); BOS is never a target under our packing.
    target_NT = keep_NT[:, 1:]

    def replace_with(values_ND):
        def fn(act, hook=None):
            act = act.clone()
            act[keep_NT] = values_ND.to(act.dtype)
            return act
        return fn

    clean_logits = bridge(toks_NT)
    clean_logp = clean_logits[:, :-1].float().log_softmax(-1)
    ce, _ = _masked_ce_kl(clean_logits, clean_logp, toks_NT, target_NT)
    sums["ce_clean"] += ce
    sae_logits = bridge.run_with_hooks(toks_NT, fwd_hooks=[(hook, replace_with(recon_ND))])
    ce, kl = _masked_ce_kl(sae_logits, clean_logp, toks_NT, target_NT)
    sums["ce_sae"] += ce
    sums["kl"] += kl
    zero_logits = bridge.run_with_hooks(toks_NT, fwd_hooks=[(hook, replace_with(torch.zeros_like(recon_ND)))])
    ce, kl = _masked_ce_kl(zero_logits, clean_logp, toks_NT, target_NT)
    sums["ce_zero"] += ce
    sums["kl_zero"] += kl
    sums["n"] += int(target_NT.sum())
