"""Time circuit discovery on SmolLM2-135M-Instruct: node attribution (attribution patching and
integrated gradients), edges, and the intervention checks, over prompt pairs with three SAEs.

    python benchmarks/circuits.py --sae blocks.9.hook_resid_post=DIR --sae ... [--json]
    python benchmarks/circuits.py --random-saes 9,15,21    # random TopK SAEs of the same shape

Prints a table of seconds per stage (one run each, wall clock, CPU) and writes the numbers to
runs/circuits/benchmark.json. One thread by default: on shared cores OpenMP's spin-waiting makes
two threads several times slower than one (measured 20 s vs 0.9 s for one 16x8 forward).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from sae.analysis.circuits.attribution import ERROR, AttributionConfig, attribute_nodes
from sae.analysis.circuits.checks import ablation_curve, attribution_vs_effect
from sae.analysis.circuits.edges import attribute_edges
from sae.analysis.circuits.graph import load_spliced
from sae.analysis.circuits.tasks import logit_diff, resolve_pairs
from sae.analysis.splice import SplicedModel
from sae.config import SAEConfig
from sae.lm import load_model
from sae.model import SparseAutoencoder


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--sae", action="append", default=[], metavar="HOOK=DIR")
    p.add_argument("--random-saes", default=None, help="layers for random TopK SAEs (d_sae 4608, k 32)")
    p.add_argument("--task", default="capitals")
    p.add_argument("--n-pairs", type=int, default=100)
    p.add_argument("--batch", type=int, default=20)
    p.add_argument("--ig-steps", type=int, default=4, help="0 skips integrated gradients")
    p.add_argument("--edge-nodes", type=int, default=10, help="kept latents per hook expanded for edges")
    p.add_argument("--check-pairs", type=int, default=40)
    p.add_argument("--check-top", type=int, default=50)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="runs/circuits/benchmark.json")
    p.add_argument("--json", action="store_true", help="print one JSON line instead of the table")
    return p.parse_args()


def _spliced(args, model) -> SplicedModel:
    if args.sae:
        return load_spliced(model, dict(s.split("=", 1) for s in args.sae))
    layers = [int(x) for x in (args.random_saes or "9,15,21").split(",")]
    hooks = [f"blocks.{i}.hook_resid_post" for i in layers]
    cfgs = [SAEConfig(d_in=model.d_model, d_sae=4608, activation="topk", k=32, hook_name=h) for h in hooks]
    return SplicedModel(model, {c.hook_name: SparseAutoencoder(c, seed=i) for i, c in enumerate(cfgs)})


def _timed(rows: list, name: str, fn, note: str = ""):
    t0 = time.perf_counter()
    out = fn()
    rows.append((name, time.perf_counter() - t0, note))
    return out


def main() -> None:
    args = _args()
    torch.set_num_threads(args.threads)
    rows: list[tuple[str, float, str]] = []
    model = _timed(rows, "load model", lambda: load_model(args.model))
    spliced = _spliced(args, model)
    pairs = resolve_pairs(args.task)[:args.n_pairs]
    checks = pairs[:args.check_pairs]
    n, b = len(pairs), args.batch
    atp = _timed(rows, "nodes: attribution patching", lambda: attribute_nodes(
        spliced, pairs, logit_diff, AttributionConfig("atp", batch_size=b)), f"{n} pairs")
    if args.ig_steps:
        _timed(rows, f"nodes: integrated gradients ({args.ig_steps} steps)", lambda: attribute_nodes(
            spliced, pairs, logit_diff, AttributionConfig("ig", args.ig_steps, b)), f"{n} pairs, 3 hooks")
    ranked = atp.ranked()
    keep = {h: [i for (hh, i), _ in ranked if hh == h and i != ERROR][:args.edge_nodes] for h in spliced.saes}
    edges = _timed(rows, "edges (VJPs into kept nodes)", lambda: attribute_edges(spliced, pairs, logit_diff, keep, b),
                   f"{args.edge_nodes}+1 nodes per hook")
    _timed(rows, f"check: patch top {args.check_top} nodes", lambda: attribution_vs_effect(
        spliced, checks, logit_diff, ranked, args.check_top, b), f"{len(checks)} pairs")
    sizes = [0, 1, 2, 5, 10, 20, 50, 100, 200, 500]
    _timed(rows, "check: faithfulness curve", lambda: ablation_curve(
        spliced, checks, logit_diff, [k for k, _ in ranked], sizes, "patch", b),
        f"{len(sizes)} sizes, {len(checks)} pairs")
    result = {"model": args.model, "saes": args.sae or f"random {args.random_saes or '9,15,21'}",
              "task": args.task, "n_pairs": n, "threads": args.threads, "machine": platform.processor() or "cpu",
              "n_edges": len(edges.scores), "seconds": {name: round(s, 2) for name, s, _ in rows}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    if args.json:
        print(json.dumps(result))
        return
    print(f"{'stage':<48} {'seconds':>8}  note")
    for name, s, note in rows:
        print(f"{name:<48} {s:8.1f}  {note}")


if __name__ == "__main__":
    main()
