"""Circuits on SmolLM2-135M-Instruct for the built-in tasks, with three trained TopK SAEs.

    python examples/circuit_smollm2.py [--saes runs/mid/train/saes] [--tasks capitals,agreement]

For each task: the model's accuracy on the pairs, a circuit by attribution patching (graph page
and JSON under runs/circuits/<task>/), the attribution-vs-patching correlation for the top 50
nodes (attribution patching and, with --ig-steps, integrated gradients on the same nodes), and
faithfulness/completeness curves under patch ablation (and mean ablation with --mean).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

import torch

from sae.analysis.circuits import CircuitConfig, find_circuit, load_spliced, logit_diff, resolve_pairs
from sae.analysis.circuits.attribution import AttributionConfig, attribute_nodes
from sae.analysis.circuits.checks import ablation_curve, pearson
from sae.analysis.circuits.tasks import task_accuracy
from sae.dashboard.circuit import write_circuit_page
from sae.lm import load_model


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--saes", default="runs/mid/train/saes", help="folder holding blocks.N.hook_resid_post/")
    p.add_argument("--layers", default="9,15,21")
    p.add_argument("--tasks", default="capitals,agreement")
    p.add_argument("--n-pairs", type=int, default=100)
    p.add_argument("--check-pairs", type=int, default=40)
    p.add_argument("--method", default="atp", choices=["atp", "ig"], help="node attribution that ranks the circuit")
    p.add_argument("--steps", type=int, default=4, help="IG steps for --method ig")
    p.add_argument("--ig-steps", type=int, default=0, help="also score the top nodes by IG (0 skips)")
    p.add_argument("--mean", action="store_true", help="also the mean-ablation curve")
    p.add_argument("--out", default="runs/circuits")
    return p.parse_args()


def run_task(spliced, model, task: str, args) -> dict:
    pairs = resolve_pairs(task)[:args.n_pairs]
    checks = pairs[:args.check_pairs]
    acc = task_accuracy(model, pairs)
    cfg = CircuitConfig(method=args.method, steps=args.steps, batch_size=20, check_top=50)
    circuit = find_circuit(spliced, pairs, logit_diff, cfg, check_pairs=checks)
    out = Path(args.out) / task
    circuit.save(out)
    write_circuit_page(circuit, out / "circuit.html")
    result = {"task": task, "accuracy": asdict(acc), **circuit.summary()}
    if args.ig_steps:
        ig = attribute_nodes(spliced, checks, logit_diff, AttributionConfig("ig", args.ig_steps, 20))
        ig_scores = [ig.get(n) for n in circuit.check.nodes]
        latents = [k for k, (_, i) in enumerate(circuit.check.nodes) if i >= 0]
        result["ig_vs_effect_pearson"] = pearson(ig_scores, circuit.check.effect)
        result["ig_vs_effect_pearson_latents"] = pearson([ig_scores[k] for k in latents],
                                                         [circuit.check.effect[k] for k in latents])
        result["ig_steps"] = args.ig_steps
        result["ig_scores_of_checked_nodes"] = ig_scores
    if args.mean:
        curve = ablation_curve(spliced, checks, logit_diff, [n for n, _ in circuit.scores.ranked()],
                               list(circuit.curve.sizes), "mean", 20)
        result["mean_ablation"] = {"faithfulness": curve.faithfulness, "completeness": curve.completeness,
                                   "nodes_for_0.8": curve.nodes_to_reach(0.8)}
    (out / "result.json").write_text(json.dumps(result, indent=1))
    return result


def main() -> None:
    args = _args()
    torch.set_num_threads(1)  # see benchmarks/circuits.py: one thread is faster on shared cores
    model = load_model("smollm2-135m-instruct")
    hooks = [f"blocks.{i}.hook_resid_post" for i in args.layers.split(",")]
    spliced = load_spliced(model, {h: str(Path(args.saes) / h) for h in hooks})
    for task in args.tasks.split(","):
        print(json.dumps(run_task(spliced, model, task, args)))


if __name__ == "__main__":
    main()
