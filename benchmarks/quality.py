"""Our TopK SAE against SAELens's TopK SAE, trained on the same cached activations.

    python benchmarks/quality.py --cache runs/quickstart/cache --saelens-python /path/to/saelens-venv/bin/python

Both train on the same rows (the cache minus its last `--holdout-frac`, which both are scored
on), with the same width, k, batch size and token budget. SAELens runs in its own venv (it needs
TransformerLens < 4) through benchmarks/quality_saelens.py, with its own defaults (constant LR
3e-4, decoder init norm 0.1, AuxK). Ours runs with the trainer's defaults for TopK (LR warm-up and
linear decay, geometric-median b_dec, W_enc = W_dec^T, unit-norm decoder, AuxK). The table gives
held-out FVU, dead fraction, L0 and wall time; `--json` prints one JSON line instead.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from sae.activations import open_cache
from sae.evals import sparsity_metrics
from sae.formats import load
from sae.train import load_run_config, train

HERE = Path(__file__).resolve().parent


def export_rows(cache_dir: str, hook: str, holdout_frac: float, tmp: Path) -> tuple[Path, Path, torch.Tensor]:
    """The cache's training and held-out rows as two safetensors files (for the SAELens venv)."""
    cache = open_cache(cache_dir)
    acts = cache.activations(hook).float()
    n_hold = int(acts.shape[0] * holdout_frac)
    train_rows, held = acts[: acts.shape[0] - n_hold], acts[acts.shape[0] - n_hold:]
    save_file({"acts": train_rows.contiguous()}, str(tmp / "train.safetensors"))
    save_file({"acts": held.contiguous()}, str(tmp / "heldout.safetensors"))
    return tmp / "train.safetensors", tmp / "heldout.safetensors", held


def run_ours(args: argparse.Namespace, hook: str, held: torch.Tensor, out: Path) -> dict:
    raw = {"data": {"cache": args.cache, "holdout_frac": args.holdout_frac},
           "sae": {"d_sae": args.width, "activation": "topk", "k": args.k, "hook_name": hook},
           "train": {"tokens": args.tokens, "batch_size": args.batch_size, "lr": args.lr,
                     "progress": False, "checkpoint_every": 0, "out": str(out), "seed": args.seed}}
    result = train(load_run_config(raw=raw))
    stats = sparsity_metrics(load(result.saes[hook]), held)
    return {"fvu": stats.fvu, "dead_frac": stats.dead_frac, "l0": stats.l0, "seconds": result.seconds}


def run_saelens(args: argparse.Namespace, train_file: Path, held_file: Path) -> dict:
    cmd = [args.saelens_python, str(HERE / "quality_saelens.py"), "--train", str(train_file),
           "--heldout", str(held_file), "--width", str(args.width), "--k", str(args.k),
           "--batch-size", str(args.batch_size), "--tokens", str(args.tokens), "--seed", str(args.seed)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"SAELens run failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", default="runs/quickstart/cache")
    parser.add_argument("--hook", default=None, help="default: the cache's first hook")
    parser.add_argument("--saelens-python", required=True, help="python of a venv with sae-lens 6 installed")
    parser.add_argument("--width", type=int, default=4608)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--tokens", type=int, default=1_000_000)
    parser.add_argument("--lr", type=float, default=4e-4, help="our peak LR (SAELens keeps its 3e-4)")
    parser.add_argument("--holdout-frac", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    hook = args.hook or open_cache(args.cache).hooks[0]
    with tempfile.TemporaryDirectory() as tmp:
        train_file, held_file, held = export_rows(args.cache, hook, args.holdout_frac, Path(tmp))
        ours = run_ours(args, hook, held, Path(tmp) / "ours")
        theirs = run_saelens(args, train_file, held_file)
    setup = {"cache": args.cache, "hook": hook, "width": args.width, "k": args.k,
             "batch_size": args.batch_size, "tokens": args.tokens, "heldout_rows": int(held.shape[0])}
    if args.json:
        print(json.dumps({"setup": setup, "ours": ours, "saelens": theirs}))
        return
    print(f"Held-out rows: {setup['heldout_rows']}; width {args.width}, k {args.k}, batch {args.batch_size}, "
          f"{args.tokens:,} training tokens, {hook}")
    print("| trainer | FVU | dead frac | L0 | seconds |")
    print("|---|---|---|---|---|")
    for name, r in (("sae-toolkit", ours), ("SAELens 6", theirs)):
        print(f"| {name} | {r['fvu']:.4f} | {r['dead_frac']:.4f} | {r['l0']:.1f} | {r['seconds']:.1f} |")
    verdict = ours["fvu"] <= theirs["fvu"] and ours["dead_frac"] <= theirs["dead_frac"]
    print("ours no worse on both" if verdict else "ours WORSE on FVU or dead fraction")
    sys.exit(0 if verdict else 1)


if __name__ == "__main__":
    main()
