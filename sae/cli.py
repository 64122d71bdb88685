"""The `sae` command line: thin subcommands that parse arguments and call one library function.

Every subcommand takes `--json` to print one JSON line with its result instead of prose.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from typing import Any

DEFAULT_MODEL = "smollm2-135m-instruct"


def _add_json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON line with the result")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sae", description="Sparse autoencoders on transformer activations: harvest a cache, train, "
        "evaluate, and explore the features. Every command takes --json for one line of JSON output.")
    parser.add_argument("--version", action="version", version="sae-toolkit 0.1.0")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("cache", help="harvest activations into an on-disk cache")
    p.add_argument("--model", default=DEFAULT_MODEL, help="hub name, local folder, .gguf, or the bundled alias")
    p.add_argument("--data", required=True, help=".txt, .jsonl, .csv/.tsv, or hf:NAME[:config][:split]")
    p.add_argument("--hook", action="append", required=True, help="hook name; repeat for several")
    p.add_argument("--tokens", type=int, required=True, help="activation rows to harvest")
    p.add_argument("--context", type=int, default=128, help="tokens per block (BOS included)")
    p.add_argument("--out", required=True, help="cache folder (rerun to resume)")
    p.add_argument("--dtype", default="float32", help="float32 or bfloat16")
    p.add_argument("--batch", type=int, default=8, help="blocks per forward pass")
    p.add_argument("--bos", default="block", choices=["block", "none"], help="BOS policy")
    p.add_argument("--text-field", default="text", help="JSONL field or CSV/TSV column with the text")
    p.add_argument("--shard-mb", type=float, default=64.0, help="target size of a shard (all hooks)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    _add_json(p)

    p = sub.add_parser("train", help="train SAEs from a YAML config")
    p.add_argument("config", help="YAML file (see configs/)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field, e.g. --set train.lr=1e-4 --set sae.k=16")
    _add_json(p)

    p = sub.add_parser("eval", help="evaluate a trained SAE on held-out text")
    p.add_argument("--sae", required=True, help="SAE folder (ours, SAELens or sparsify)")
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--data", required=True)
    p.add_argument("--tokens", type=int, default=8192)
    p.add_argument("--context", type=int, default=128)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--hook", default=None, help="hook to splice at (default: the SAE's own)")
    p.add_argument("--text-field", default="text")
    p.add_argument("--device", default="auto")
    _add_json(p)

    p = sub.add_parser("dashboard", help="feature dashboard (offline HTML) for an SAE's latents")
    p.add_argument("--sae", help="SAE folder (ours, SAELens or sparsify)")
    p.add_argument("--model", default=DEFAULT_MODEL, help="the model the SAE reads")
    p.add_argument("--data", help=".txt, .jsonl, .csv/.tsv, or hf:NAME[:config][:split]")
    p.add_argument("--tokens", type=int, default=50_000, help="tokens to analyse")
    p.add_argument("--out", required=True, help="output folder (index.html, latents/, feature-data/)")
    p.add_argument("--latents", default=None, help="latents to show, e.g. 0-99,7 (default: all)")
    p.add_argument("--feature-data", default=None,
                   help="rebuild from a feature-data folder of an earlier run instead of computing")
    p.add_argument("--labels", default=None, help='JSON file {"<latent id>": "label", ...}')
    p.add_argument("--neuronpedia", action="store_true", help="also write Neuronpedia feature JSON")
    p.add_argument("--context", type=int, default=128, help="tokens per block (BOS included)")
    p.add_argument("--batch", type=int, default=8, help="blocks per forward pass")
    p.add_argument("--text-field", default="text", help="JSONL field or CSV/TSV column with the text")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    _add_json(p)

    from .analysis.behaviour.cli_snippet import add_parser as add_behaviour_parser

    add_behaviour_parser(sub)
    from .analysis.circuits.cli_snippet import add_parser as add_circuit_parser

    add_circuit_parser(sub)

    p = sub.add_parser("report", help="write report.html for a training run folder")
    p.add_argument("run", help="run folder holding metrics.jsonl")
    _add_json(p)
    return parser


def _device(name: str) -> str:
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def cmd_cache(args: argparse.Namespace) -> dict[str, Any]:
    from .activations import build_cache
    from .lm import load_model, parse_dtype

    model = load_model(args.model, device=_device(args.device), dtype=parse_dtype(args.dtype))
    res = build_cache(model, args.data, args.hook, args.tokens, args.out, context=args.context,
                      dtype=args.dtype, batch=args.batch, bos=args.bos, text_field=args.text_field,
                      progress=not args.json, shard_bytes=int(args.shard_mb * 2**20))
    return {"tokens": res.tokens, "seconds": round(res.seconds, 3),
            "tokens_per_s": round(res.tokens_per_s, 1), "out": res.out, "resumed_from": res.resumed_from}


def cmd_train(args: argparse.Namespace) -> dict[str, Any]:
    from .train import load_run_config, train

    run_cfg = load_run_config(args.config, args.set)
    if args.json:
        run_cfg.train.progress = False
    return train(run_cfg).summary()


def cmd_eval(args: argparse.Namespace) -> dict[str, Any]:
    from .evals import evaluate_on_text
    from .formats import load
    from .lm import load_model

    device = _device(args.device)
    sae = load(args.sae, device=device)
    model = load_model(args.model, device=device)
    res = evaluate_on_text(sae, model, args.data, n_tokens=args.tokens, context=args.context,
                           batch=args.batch, hook=args.hook, text_field=args.text_field,
                           progress=not args.json)
    return res.to_dict()


def cmd_dashboard(args: argparse.Namespace) -> dict[str, Any]:
    from .analysis.features import FeatureConfig
    from .dashboard.features import build_dashboard

    cfg = FeatureConfig(context=args.context, batch=args.batch, text_field=args.text_field)
    res = build_dashboard(args.out, sae_path=args.sae, model=args.model, source=args.data,
                          n_tokens=args.tokens, latents=args.latents, cfg=cfg,
                          feature_data=args.feature_data, labels=args.labels,
                          neuronpedia=args.neuronpedia, device=_device(args.device),
                          progress=not args.json)
    return {"index": str(res.dashboard.index), "latents": res.dashboard.n_latents,
            "tokens": res.n_tokens, "feature_data": str(res.feature_data),
            "seconds_features": round(res.seconds_features, 3),
            "seconds_html": round(res.dashboard.seconds, 3),
            "megabytes": round(res.dashboard.megabytes, 1),
            "neuronpedia_files": len(res.neuronpedia)}


def cmd_report(args: argparse.Namespace) -> dict[str, Any]:
    from .dashboard.report import write_report

    path = write_report(args.run)
    return {"report": str(path)}


def cmd_behaviour(args: argparse.Namespace) -> dict[str, Any]:
    from .analysis.behaviour.cli_snippet import cmd_behaviour as run

    return run(args)


def cmd_circuit(args: argparse.Namespace) -> dict[str, Any]:
    from .analysis.circuits.cli_snippet import cmd_circuit as run

    return run(args)


_COMMANDS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "cache": cmd_cache, "train": cmd_train, "eval": cmd_eval, "report": cmd_report,
    "dashboard": cmd_dashboard, "behaviour": cmd_behaviour, "circuit": cmd_circuit,
}


def _print_human(result: dict[str, Any]) -> None:
    for key, value in result.items():
        if isinstance(value, float):
            value = f"{value:.6g}"
        elif isinstance(value, (dict, list)):
            value = json.dumps(value)
        print(f"{key:>20}: {value}")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.json else logging.INFO, format="%(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    t0 = time.perf_counter()
    try:
        # Libraries print to stdout (TransformerLens: "Moving model to device"); keep stdout for
        # the result alone so that --json output is exactly one line.
        with contextlib.redirect_stdout(sys.stderr):
            result = _COMMANDS[args.command](args)
    except (ValueError, RuntimeError, FileNotFoundError) as err:
        if not _is_user_error(err):
            raise
        print(f"sae {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"sae {args.command}: interrupted; rerun the same command to resume.", file=sys.stderr)
        return 130
    result.setdefault("wall_seconds", round(time.perf_counter() - t0, 3))
    if args.json:
        print(json.dumps(result))
    else:
        _print_human(result)
    return 0


def _is_user_error(err: BaseException) -> bool:
    """Errors whose message is meant for the user (ours), as opposed to bugs."""
    names = {"ConfigError", "DataError", "HookError", "CacheError", "ModelLoadError", "FormatError",
             "TrainingError", "FileNotFoundError"}
    return type(err).__name__ in names or any(c.__name__ in names for c in type(err).__mro__)


if __name__ == "__main__":
    raise SystemExit(main())
