"""Cost of the feature pass next to the plain harvest it rides on.

Both run the bundled SmolLM2 up to blocks.6.hook_resid_post over the same token blocks:
  1. harvest: `Harvester.iter_rows` (the rows `sae cache` would store);
  2. feature pass: `sae.analysis.features.run_pass`, i.e. the same harvest plus encoding and
     every streaming statistic (counts, histogram, top contexts, quantile reservoir).
Target: pass time <= 1.5x harvest time. The one-time weight-only work (logit effects through
W_U, decoder neighbours) is timed apart: it does not grow with the number of tokens.
The SAE is the quickstart's when it exists, else a random TopK SAE of the same shape.
Every number is the best of --repeats interleaved runs (the machine may be shared); the pass
also reports how its own time splits into model forward, encoder and statistics, a ratio that
load changes far less than the two separate timings.

    python benchmarks/features.py [--tokens 8192] [--repeats 3] [--threads N] [--json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from _timing import best_of

from sae.activations import Harvester, pack_blocks
from sae.analysis.features import FeatureConfig, decoder_neighbours, logit_effects, run_pass
from sae.config import SAEConfig
from sae.formats import load
from sae.lm import DEFAULT_MODEL, load_model
from sae.model import SparseAutoencoder

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "sae" / "_bundled" / "wikitext-2-valid.txt"
HOOK = "blocks.6.hook_resid_post"
QUICKSTART_SAE = ROOT / "runs" / "quickstart" / "train" / "saes" / HOOK


def get_sae(d_in: int) -> tuple[SparseAutoencoder, str]:
    if QUICKSTART_SAE.is_dir():
        return load(QUICKSTART_SAE), str(QUICKSTART_SAE.relative_to(ROOT))
    cfg = SAEConfig(d_in=d_in, d_sae=8 * d_in, activation="topk", k=32, hook_name=HOOK)
    return SparseAutoencoder(cfg, seed=0), f"random topk SAE d_sae={cfg.d_sae} k=32"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(DEFAULT_MODEL)
    sae, sae_name = get_sae(model.d_model)
    cfg = FeatureConfig(batch=args.batch)
    blocks = pack_blocks(str(CORPUS), model.tokenizer, cfg.context, args.tokens)
    harvester = Harvester(model, [HOOK])
    latents = torch.arange(sae.d_sae)
    harvest = lambda: list(harvester.iter_rows(blocks.tokens_NT, blocks.keep_NT, cfg.batch))  # noqa: E731
    harvest()  # warm-up
    # Interleaved, so that both see the same load on a shared machine; best of each.
    t_h, t_p, inner = float("inf"), float("inf"), None
    for _ in range(args.repeats):
        t_h = min(t_h, best_of(harvest, 1))
        t0 = time.perf_counter()
        res = run_pass(sae, harvester, blocks, latents, cfg)
        if time.perf_counter() - t0 < t_p:
            t_p, inner = time.perf_counter() - t0, res
    t0 = time.perf_counter()
    logit_effects(sae, model, latents, cfg.n_logits)
    decoder_neighbours(sae, latents, cfg.n_neighbours)
    t_w = time.perf_counter() - t0
    n = blocks.n_rows
    rows = [{"what": "harvest (Harvester.iter_rows)", "s": t_h, "tok_per_s": n / t_h, "vs_harvest": 1.0},
            {"what": "feature pass (harvest + encode + statistics)", "s": t_p, "tok_per_s": n / t_p,
             "vs_harvest": t_p / t_h}]
    # Inside the fastest pass: the model forward alone, then what the pass adds to it.
    split = {"model_s": inner.seconds_model, "encode_s": inner.seconds_encode,
             "stats_s": inner.seconds - inner.seconds_model - inner.seconds_encode,
             "pass_vs_its_forward": inner.seconds / inner.seconds_model}
    result = {"sae": sae_name, "d_sae": sae.d_sae, "tokens": n, "threads": torch.get_num_threads(),
              "rows": rows, "inside_pass": split, "weights_once_s": t_w, "target_vs_harvest": 1.5}
    if args.json:
        print(json.dumps(result))
        return
    print(f"SAE: {sae_name}  d_sae={sae.d_sae}  tokens={n}  threads={torch.get_num_threads()}  "
          f"best of {args.repeats}")
    print(f"{'what':48} {'seconds':>8} {'tok/s':>8} {'x harvest':>10}")
    for r in rows:
        print(f"{r['what']:48} {r['s']:8.2f} {r['tok_per_s']:8.0f} {r['vs_harvest']:10.2f}")
    print(f"inside the fastest pass: model {split['model_s']:.2f} s, encode {split['encode_s']:.2f} s, "
          f"statistics {split['stats_s']:.2f} s -> pass / its own forward = {split['pass_vs_its_forward']:.2f}x")
    print(f"one-time logit effects + neighbours for {sae.d_sae} latents: {t_w:.2f} s")


if __name__ == "__main__":
    main()
