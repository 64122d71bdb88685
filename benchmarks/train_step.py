"""Milliseconds per SAE training step against the encoder-matmul floor, measured in one run.

    python benchmarks/train_step.py            # CPU config of the training issue
    python benchmarks/train_step.py --json

The step is exactly the trainer's (`Trainer._step_member`): forward with the sparse kernels, MSE
(+AuxK when latents are dead), backward, decoder-gradient projection, fused Adam, decoder
renormalisation, firing bookkeeping. The floor is the dense fp32 encoder matmul x @ W_enc of the
same shapes. On a CUDA machine, benchmarks/train_step_gpu.py measures the GPU configs.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from sae.config import DataConfig, EvalConfig, SAEConfig, TrainConfig
from sae.train.run_config import RunConfig, SAESpec
from sae.train.trainer import Member, Trainer


def _time(fn, reps: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best * 1000


def bare_trainer(cfg: SAEConfig, batch: int, dead_tokens: int, device: str = "cpu",
                 encoder_dtype: str = "float32") -> tuple[Trainer, Member]:
    """A Trainer with one member (its own SAE and optimiser) and no data source, to time its step
    function alone."""
    trainer = Trainer.__new__(Trainer)
    trainer.tc = TrainConfig(tokens=batch * 1000, batch_size=batch, dead_tokens=dead_tokens, progress=False,
                             encoder_dtype=encoder_dtype)
    trainer.cfg = RunConfig(data=DataConfig(cache="unused"), train=trainer.tc, eval=EvalConfig(),
                            saes=[SAESpec(fields={})])
    trainer.rank, trainer.world, trainer.step, trainer.total_steps = 0, 1, 0, 1000
    trainer.device = torch.device(device)
    trainer.skipped_rows = 0
    trainer.sae_cfgs = [cfg]
    return trainer, trainer._member(0, cfg)  # the trainer's own SAE and optimiser set-up


def bench(d_in: int, d_sae: int, k: int, batch: int, reps: int, activation: str = "topk",
          dead_frac: float = 0.0) -> dict[str, float]:
    torch.manual_seed(0)
    x_BD = torch.randn(batch, d_in)
    cfg = SAEConfig(d_in=d_in, d_sae=d_sae, k=k, activation=activation, hook_name="h")
    trainer, member = bare_trainer(cfg, batch, dead_tokens=10**12)
    if dead_frac:
        member.since_fired_F[: int(dead_frac * d_sae)] = 10**13
    W_enc = member.sae.W_enc.detach()
    matmul_ms = _time(lambda: x_BD @ W_enc, reps)
    step_ms = _time(lambda: trainer._step_member(member, x_BD), reps)
    flops = 2 * batch * d_in * d_sae
    return {"d_in": d_in, "d_sae": d_sae, "k": k, "batch": batch, "activation": activation,
            "dead_frac": dead_frac, "matmul_ms": round(matmul_ms, 1), "step_ms": round(step_ms, 1),
            "ratio": round(step_ms / matmul_ms, 2), "tokens_per_s": round(batch / step_ms * 1000),
            "matmul_gflops": round(flops / matmul_ms / 1e6, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    rows = [bench(576, 4608, 32, 4096, args.reps),
            bench(576, 4608, 32, 4096, args.reps, dead_frac=0.1),
            bench(576, 4608, 32, 4096, args.reps, activation="batchtopk"),
            bench(576, 4608, 32, 4096, args.reps, activation="relu"),
            bench(576, 4608, 32, 4096, args.reps, activation="jumprelu")]
    if args.json:
        print(json.dumps({"device": "cpu", "threads": torch.get_num_threads(), "rows": rows}))
        return
    print(f"CPU, {torch.get_num_threads()} threads; best of {args.reps}. Target (topk): step <= 2x matmul.")
    print("| activation | dead | d_in | d_sae | k | batch | fp32 matmul ms | step ms | step/matmul | tok/s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['activation']} | {r['dead_frac']:.0%} | {r['d_in']} | {r['d_sae']} | {r['k']} | {r['batch']} "
              f"| {r['matmul_ms']} | {r['step_ms']} | {r['ratio']} | {r['tokens_per_s']} |")


if __name__ == "__main__":
    main()
