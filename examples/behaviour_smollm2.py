"""Behaviour latents of SmolLM2-135M-Instruct: sycophancy and roleplaying deception at a middle layer.

Runs `sae.analysis.behaviour.run_behaviour` on the bundled data/behaviour sets with an SAE at
blocks.15.hook_resid_post (of 30 layers), writes runs/behaviour/<set>.json (every number) and
runs/behaviour/<set>/index.html (the behaviour page), and prints a summary table. The sizes
below keep it to a few minutes on 2 CPU cores; raise them on a GPU.

    .venv/bin/python examples/behaviour_smollm2.py --sae runs/mid/train/saes/blocks.15.hook_resid_post
    .venv/bin/python examples/behaviour_smollm2.py --sets refusal --refusal-dir PATH/TO/refusal/splits
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch

from sae.analysis.behaviour import BehaviourConfig, read_jsonl, run_behaviour
from sae.analysis.behaviour.causal import CausalConfig
from sae.analysis.behaviour.datasets import from_refusal
from sae.analysis.behaviour.metrics import MetricConfig
from sae.analysis.labels import LabelConfig
from sae.dashboard.behaviour import write_behaviour_page
from sae.formats import load
from sae.lm import load_model

REPO = Path(__file__).resolve().parents[1]
SETS = {
    "sycophancy": dict(file="sycophancy_anthropic.jsonl", n_items=160, n_attr=48, n_select=16, n_causal=24),
    "deception": dict(file="deception_roleplaying.jsonl", n_items=80, n_attr=24, n_select=12, n_causal=16),
    # statements carry no model metric: ranking and probes only (--sets truth)
    "truth": dict(file="truth_facts.jsonl", n_items=400, n_attr=None, n_select=None, n_causal=None),
    # harmful vs harmless instructions (Arditi et al. 2024 splits), not bundled (the harmless ones
    # are CC BY-NC): --sets refusal --refusal-dir DIR with harmful_train.json, harmless_train.json
    "refusal": dict(file=None, n_items=160, n_attr=48, n_select=16, n_causal=24),
}


def config(spec: dict, hook: str, batch: int) -> BehaviourConfig:
    return BehaviourConfig(
        hook=hook, n_items=spec["n_items"], n_attr=spec["n_attr"], n_select=spec["n_select"],
        n_causal=spec["n_causal"], n_top=8, probe_ks=(1, 4, 16, 64),
        metric=MetricConfig(max_completion_tokens=24, batch=batch),
        causal=CausalConfig(scales=(-4.0, -2.0, 0.0, 2.0, 4.0), n_steer=1, ce_tokens=1024, removal_candidates=4,
                            removal_steps=2, batch=batch),
        labels=LabelConfig(corpus_tokens=4096))


def summary_rows(name: str, rep: dict) -> list[str]:
    p, clean = rep["probes"], rep["clean"]
    steer = rep["steering"][0] if rep["steering"] else None
    rem = rep["removal"]
    rows = [f"## {name} ({rep['meta']['n_train']} train / {rep['meta']['n_test']} test items, {rep['meta']['kind']})",
            f"clean: {json.dumps(clean)}",
            f"significant latents (BH q<{rep['ranking']['fdr']}): {rep['ranking']['n_significant']}",
            f"held-out AUROC: best latent {p['best_latent']} {p['best_latent_auroc']:.3f} | sparse "
            + " ".join(f"k={k}: {v:.3f}" for k, v in p["sparse_probe_auroc"].items())
            + f" | dense {p['dense_probe_auroc']:.3f}"]
    for r in rep["top_latents"][:5]:
        rows.append(f"  latent {r['latent']}: AUROC {r['auroc']:.3f} (test {r['test_auroc']:.3f}) "
                    f"d {r['cohen_d']:+.2f} q {r['q']:.2g} attr {r.get('attribution', float('nan')):+.4f} "
                    f"| {r['label']}")
    if steer:
        rows.append(f"steering latent {steer['latent']} (u={steer['unit']:.3g}): "
                    + ", ".join(f"s={s:g}: {b:+.3f} (dCE {c:+.3f})" for s, b, c in
                                zip(steer["scales"], steer["behaviour"], steer["ce_delta"], strict=True)))
    if rem:
        rows.append("removal: " + " -> ".join(f"{p['latents']}: {p['behaviour']:+.3f}/test {p['behaviour_test']:+.3f}"
                                              f" dCE {p['ce_delta']:+.4f}" for p in rem["curve"]))
    rows.append(f"timings (s): {json.dumps(rep['timings'])}")
    return rows


def load_set(name: str, spec: dict, refusal_dir: str | None):
    """A bundled set from data/behaviour, or the refusal instruction lists from `refusal_dir`."""
    if name != "refusal":
        return read_jsonl(REPO / "data/behaviour" / spec["file"], name)
    if not refusal_dir:
        raise SystemExit("--sets refusal needs --refusal-dir DIR holding harmful_train.json and harmless_train.json "
                         "(github.com/andyrdt/refusal_direction, dataset/splits).")
    return from_refusal(Path(refusal_dir) / "harmful_train.json", Path(refusal_dir) / "harmless_train.json")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sae", default=str(REPO / "runs/mid/train/saes/blocks.15.hook_resid_post"))
    parser.add_argument("--out", default=str(REPO / "runs/behaviour"))
    parser.add_argument("--sets", default="sycophancy,deception")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every item count (e.g. 0.1 for a smoke run)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--refusal-dir", default=None,
                        help="folder with harmful_train.json and harmless_train.json (for --sets refusal)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads; 1 is fastest on shared cores (OpenMP spin-waiting)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    sae = load(args.sae)
    hook = sae.cfg.hook_name or "blocks.15.hook_resid_post"
    model = load_model("smollm2-135m-instruct")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in args.sets.split(","):
        spec = {k: (max(2, round(v * args.scale)) if k.startswith("n_") and v else v) for k, v in SETS[name].items()}
        t0 = time.perf_counter()
        data = load_set(name, spec, args.refusal_dir)
        rep = run_behaviour(model, sae, data, config(spec, hook, args.batch))
        full = rep.to_dict(per_latent=True)
        full["meta"] |= {"sae": str(args.sae), "wall_s": round(time.perf_counter() - t0, 1), "spec": spec}
        (out / f"{name}.json").write_text(json.dumps(full))
        write_behaviour_page(full, out / name / "index.html", "../../features/index.html#latent-{id}")
        print("\n".join(summary_rows(name, full)), flush=True)


if __name__ == "__main__":
    main()
