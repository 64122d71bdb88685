"""Train SAELens's own TopK SAE on stored activations; print held-out FVU, dead fraction, time.

The SAELens side of the quality comparison. Runs in the SAELens venv, not the project's:

    python3 -m venv $SAELENS_VENV
    $SAELENS_VENV/bin/pip install torch==2.13.0
    $SAELENS_VENV/bin/pip install "sae-lens>=6,<7"      # resolved to 6.54.12
    $SAELENS_VENV/bin/python benchmarks/quality_saelens.py \
        --train train.safetensors --heldout heldout.safetensors --width 4096 --k 32

Both files hold one tensor `acts` [N, d_in] (float32). Output: one JSON line on stdout,
{"fvu", "dead_frac", "seconds", "l0", "steps", "train_rows"}; progress goes to stderr.

How it trains, and why this way:
1. SAELens 6's `SAETrainer` takes any `DataProvider` (an iterator of [B, d_in] batches); its
   `LanguageModelSAETrainingRunner` only adds a language model and an `ActivationsStore`
   (harvest + shuffle buffer) in front of it. So the script keeps SAELens's own trainer, SAE
   class and loss, and replaces only the store with an iterator over the stored rows, reshuffled
   (seeded) each epoch, in place of the store's shuffle buffer (a last partial batch is dropped).
2. The SAE is `TopKTrainingSAE(TopKTrainingSAEConfig(d_in, d_sae=width, k))` with SAELens's
   defaults: decoder_init_norm 0.1, rescale_acts_by_decoder_norm on, AuxK loss coefficient 1,
   b_dec at zero, no activation normalisation. The trainer config mirrors the runner's
   `to_sae_trainer_config()` defaults: Adam (0.9, 0.999), constant LR 3e-4 with no warm-up,
   lr_end = lr / 10, batch 4096, dead_feature_window 1000 steps (--dead-feature-window),
   grad-norm clip 1.0 (inside SAETrainer), no autocast, no wandb.
3. `--tokens` is the budget in rows (default: one pass over --train); steps = tokens // batch.
4. After `fit()`, the trained SAE encodes and decodes the held-out rows in eval mode:
   FVU = sum ||x - recon||^2 / sum ||x - mean(x)||^2 over held-out rows (mean over held-out);
   dead_frac = fraction of latents that never fire on the held-out rows; l0 = mean active
   latents per row; seconds = wall time of `fit()` alone.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Iterator

import torch
from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
from sae_lens.config import LoggingConfig, SAETrainerConfig
from sae_lens.training.sae_trainer import SAETrainer
from safetensors.torch import load_file


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", required=True, help="safetensors with `acts` [N, d_in]")
    parser.add_argument("--heldout", required=True, help="safetensors with `acts` [M, d_in]")
    parser.add_argument("--width", type=int, default=4096, help="d_sae (latents)")
    parser.add_argument("--k", type=int, default=32, help="active latents per row")
    parser.add_argument("--batch-size", type=int, default=4096, help="rows per step")
    parser.add_argument("--lr", type=float, default=3e-4, help="Adam learning rate")
    parser.add_argument("--tokens", type=int, default=0,
                        help="training rows in total (0: one pass over --train)")
    parser.add_argument("--dead-feature-window", type=int, default=1000,
                        help="steps without firing after which AuxK treats a latent as dead")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-batch", type=int, default=8192, help="held-out rows per forward")
    return parser.parse_args()


def read_acts(path: str) -> torch.Tensor:
    acts_ND = load_file(path)["acts"]
    if acts_ND.ndim != 2:
        raise ValueError(f"{path}: `acts` must be [N, d_in], got shape {tuple(acts_ND.shape)}.")
    return acts_ND.float()


def shuffled_batches(acts_ND: torch.Tensor, batch: int, seed: int) -> Iterator[torch.Tensor]:
    """Endless [batch, d_in] batches, a fresh seeded permutation per epoch."""
    if len(acts_ND) < batch:
        raise ValueError(f"--train has {len(acts_ND)} rows, fewer than --batch-size {batch}.")
    gen = torch.Generator().manual_seed(seed)
    while True:
        perm = torch.randperm(len(acts_ND), generator=gen)
        for start in range(0, len(perm) - batch + 1, batch):
            yield acts_ND[perm[start:start + batch]]


def train(args: argparse.Namespace, acts_ND: torch.Tensor) -> tuple[TopKTrainingSAE, float, int]:
    """SAELens's SAETrainer on a TopKTrainingSAE; returns (sae, seconds, steps)."""
    torch.manual_seed(args.seed)  # SAELens initialises weights from the global generator
    sae_cfg = TopKTrainingSAEConfig(d_in=acts_ND.shape[1], d_sae=args.width, k=args.k,
                                    device=args.device)
    sae = TopKTrainingSAE(sae_cfg)
    tokens = args.tokens or len(acts_ND)
    trainer_cfg = SAETrainerConfig(
        total_training_samples=tokens,
        train_batch_size_samples=args.batch_size,
        lr=args.lr,
        lr_end=args.lr / 10,
        device=args.device,
        dead_feature_window=args.dead_feature_window,
        logger=LoggingConfig(log_to_wandb=False),
    )
    trainer = SAETrainer(cfg=trainer_cfg, sae=sae,
                         data_provider=shuffled_batches(acts_ND, args.batch_size, args.seed))
    start = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # keep stdout for the JSON line
        sae = trainer.fit()
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    return sae, time.perf_counter() - start, trainer.n_training_steps


@torch.no_grad()
def evaluate(sae: TopKTrainingSAE, heldout_ND: torch.Tensor, device: str,
             eval_batch: int) -> dict[str, float]:
    """Held-out FVU (against the held-out mean), dead fraction and mean L0."""
    sae.eval()
    mean_D = heldout_ND.mean(0).to(device)
    err = total = active = 0.0
    fired_F = torch.zeros(sae.cfg.d_sae, dtype=torch.bool, device=device)
    for start in range(0, len(heldout_ND), eval_batch):
        x_BD = heldout_ND[start:start + eval_batch].to(device)
        latents_BF = sae.encode(x_BD)
        recon_BD = sae.decode(latents_BF)
        err += (x_BD - recon_BD).pow(2).sum().item()
        total += (x_BD - mean_D).pow(2).sum().item()
        active += (latents_BF > 0).sum().item()
        fired_F |= (latents_BF > 0).any(0)
    return {"fvu": err / total, "dead_frac": 1.0 - fired_F.float().mean().item(),
            "l0": active / len(heldout_ND)}


def main() -> None:
    args = parse_args()
    train_ND, heldout_ND = read_acts(args.train), read_acts(args.heldout)
    if train_ND.shape[1] != heldout_ND.shape[1]:
        raise ValueError(f"--train rows have d_in {train_ND.shape[1]}, --heldout rows "
                         f"{heldout_ND.shape[1]}.")
    sae, seconds, steps = train(args, train_ND)
    result = evaluate(sae, heldout_ND, args.device, args.eval_batch)
    print(json.dumps({"fvu": result["fvu"], "dead_frac": result["dead_frac"], "seconds": seconds,
                      "l0": result["l0"], "steps": steps,
                      "train_rows": args.tokens or len(train_ND)}))


if __name__ == "__main__":
    main()
