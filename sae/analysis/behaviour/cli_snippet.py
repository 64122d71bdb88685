"""`sae behaviour`: the argparse lines and the command function, for sae/cli.py to wire in.

    from .analysis.behaviour.cli_snippet import add_parser as add_behaviour, cmd_behaviour
    add_behaviour(sub)                       # in _parser(), before `return parser`
    _COMMANDS["behaviour"] = cmd_behaviour
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..._argtypes import int_list

DEFAULT_MODEL = "smollm2-135m-instruct"


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(t) for t in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers such as -4,-2,0,2,4; got {text!r}") from None


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add the `behaviour` subcommand to the `sae` subparsers."""
    p = sub.add_parser("behaviour", help="find, test and label SAE latents behind a behaviour")
    p.add_argument("--sae", required=True, help="SAE folder (ours, SAELens or sparsify)")
    p.add_argument("--model", default=DEFAULT_MODEL, help="the model the SAE reads")
    p.add_argument("--dataset", required=True,
                   help="behaviour data: JSONL in the schema of docs/behaviour.md, the sycophancy A/B "
                        "JSON, the roleplaying JSON, or a statement,label CSV")
    p.add_argument("--out", required=True, help="output folder (behaviour.json, index.html)")
    p.add_argument("--hook", default=None, help="hook of the SAE (default: the SAE's own)")
    p.add_argument("--n-items", type=int, default=None, help="use a seeded random subset of this many items")
    p.add_argument("--test-frac", type=float, default=0.4, help="fraction of items held out")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-top", type=int, default=10, help="latents reported and labelled")
    p.add_argument("--probe-k", type=int_list, default=(1, 4, 16), help="sparse probe sizes, e.g. 1,4,16")
    p.add_argument("--scales", type=_floats, default=(-4.0, -2.0, -1.0, 0.0, 1.0, 2.0, 4.0),
                   help="steering strengths in units of the latent's typical activation; write --scales=-4,-2,0,2,4")
    p.add_argument("--mode", default="add", choices=["add", "clamp"], help="steering edit")
    p.add_argument("--n-steer", type=int, default=3, help="top latents whose steering curve is measured")
    p.add_argument("--removal-candidates", type=int, default=6)
    p.add_argument("--removal-steps", type=int, default=3)
    p.add_argument("--n-attr", type=int, default=None, help="train items for attribution (default all)")
    p.add_argument("--n-select", type=int, default=None, help="train items removal is chosen on (default all)")
    p.add_argument("--n-causal", type=int, default=None, help="held-out items for steering/removal (default all)")
    p.add_argument("--corpus", default=None, help="ordinary text for the CE cost and label contexts "
                                                  "(default: the bundled WikiText-2 validation split)")
    p.add_argument("--ce-tokens", type=int, default=2048, help="tokens of ordinary text for the CE cost (0 skips)")
    p.add_argument("--label-tokens", type=int, default=8192, help="corpus tokens scanned for label contexts")
    p.add_argument("--max-completion-tokens", type=int, default=32)
    p.add_argument("--batch", type=int, default=8, help="sequences per forward pass")
    p.add_argument("--features-href", default="../features/index.html#latent-{id}",
                   help="link from each latent to its feature-dashboard page ({id} is replaced)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--json", action="store_true", help="print one JSON line with the result")
    return p


def config_from_args(args: argparse.Namespace):
    """The BehaviourConfig the arguments describe."""
    from ..labels import LabelConfig
    from .causal import CausalConfig
    from .metrics import MetricConfig
    from .report import DEFAULT_CORPUS, BehaviourConfig

    return BehaviourConfig(
        hook=args.hook, n_items=args.n_items, test_frac=args.test_frac, seed=args.seed, n_top=args.n_top,
        probe_ks=args.probe_k, n_attr=args.n_attr, n_select=args.n_select, n_causal=args.n_causal,
        corpus=args.corpus or DEFAULT_CORPUS,
        metric=MetricConfig(max_completion_tokens=args.max_completion_tokens, batch=args.batch),
        causal=CausalConfig(scales=args.scales, mode=args.mode, n_steer=args.n_steer, ce_tokens=args.ce_tokens,
                            removal_candidates=args.removal_candidates, removal_steps=args.removal_steps,
                            batch=args.batch),
        labels=LabelConfig(corpus_tokens=args.label_tokens))


def cmd_behaviour(args: argparse.Namespace) -> dict[str, Any]:
    """Run the behaviour pipeline; write behaviour.json (every number, per-latent arrays too) and
    the behaviour page index.html into --out; return the summary (no per-latent arrays)."""
    import torch

    from ...dashboard.behaviour import write_behaviour_page
    from ...formats import load
    from ...lm import load_model
    from .datasets import load_behaviour
    from .report import run_behaviour

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    cfg = config_from_args(args)
    dataset = load_behaviour(args.dataset)
    sae = load(args.sae, device=device)
    model = load_model(args.model, device=device)
    report = run_behaviour(model, sae, dataset, cfg)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    full = report.to_dict(per_latent=True)
    (out / "behaviour.json").write_text(json.dumps(full), encoding="utf-8")
    page = write_behaviour_page(full, out / "index.html", args.features_href)
    return report.to_dict() | {"out": str(out), "page": str(page)}
