"""`sae circuit`: the argparse lines and the command function, for sae/cli.py to wire in.

    from .analysis.circuits.cli_snippet import add_parser as add_circuit, cmd_circuit
    add_circuit(sub)                         # in _parser(), before `return parser`
    _COMMANDS["circuit"] = cmd_circuit

Example:
    sae circuit --sae blocks.9.hook_resid_post=runs/mid/train/saes/blocks.9.hook_resid_post \\
        --sae blocks.15.hook_resid_post=... --model smollm2-135m-instruct --pairs capitals \\
        --metric logit-diff --out runs/circuits/capitals --json
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..._argtypes import int_list

DEFAULT_MODEL = "smollm2-135m-instruct"


def _sae_spec(text: str) -> tuple[str, str]:
    hook, sep, path = text.partition("=")
    if not sep or not hook or not path:
        raise argparse.ArgumentTypeError(f"expected HOOK=DIR such as blocks.9.hook_resid_post=runs/x/sae; got {text!r}")
    return hook, path


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add the `circuit` subcommand to the `sae` subparsers."""
    p = sub.add_parser("circuit", help="find a circuit of SAE latents for a task of prompt pairs")
    p.add_argument("--sae", type=_sae_spec, action="append", required=True, metavar="HOOK=DIR",
                   help="an SAE to splice in at HOOK; repeat for several hooks (in model order)")
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--pairs", required=True, help="prompt-pair JSONL (clean, corrupted, correct, wrong) "
                                                  "or a built-in task: capitals, agreement")
    p.add_argument("--metric", default="logit-diff", choices=["logit-diff", "sycophancy"])
    p.add_argument("--out", required=True, help="output folder (circuit.json, circuit.html)")
    p.add_argument("--method", default="atp", choices=["atp", "ig"], help="node attribution method")
    p.add_argument("--steps", type=int, default=8, help="integrated-gradient steps")
    p.add_argument("--batch", type=int, default=16, help="prompt pairs per forward pass")
    p.add_argument("--n-pairs", type=int, default=None, help="use the first N pairs")
    p.add_argument("--check-pairs", type=int, default=None,
                   help="pairs for the intervention checks (default all; they cost a forward per node)")
    p.add_argument("--check-top", type=int, default=50, help="top nodes compared with their patching effect")
    p.add_argument("--curve", type=int_list, default=(0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000),
                   help="circuit sizes for the faithfulness curve, e.g. 0,5,20,100")
    p.add_argument("--ablation", default="patch", choices=["patch", "mean"])
    p.add_argument("--max-nodes", type=int, default=60, help="nodes drawn in the graph")
    p.add_argument("--node-threshold", type=float, default=None, help="keep nodes with |score| >= this")
    p.add_argument("--edge-threshold", type=float, default=None, help="keep edges with |score| >= this")
    p.add_argument("--link-template", default=None,
                   help="URL of a latent's dashboard page, with {hook} and {latent}")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true", help="print one JSON line with the result")
    return p


def cmd_circuit(args: argparse.Namespace) -> dict[str, Any]:
    from ...dashboard.circuit import LINK_TEMPLATE, write_circuit_page
    from ...lm import load_model
    from .graph import CircuitConfig, find_circuit, load_spliced
    from .tasks import get_metric, resolve_pairs

    cfg = CircuitConfig(method=args.method, steps=args.steps, batch_size=args.batch,
                        node_threshold=args.node_threshold, edge_threshold=args.edge_threshold,
                        max_nodes=args.max_nodes, check_top=args.check_top, curve_sizes=args.curve,
                        ablation=args.ablation)
    pairs = resolve_pairs(args.pairs)[:args.n_pairs]
    model = load_model(args.model, device=args.device)
    spliced = load_spliced(model, dict(args.sae), device=args.device)
    circuit = find_circuit(spliced, pairs, get_metric(args.metric), cfg,
                           check_pairs=pairs[:args.check_pairs] if args.check_pairs else None)
    out = Path(args.out)
    result = circuit.summary()
    result["json"] = str(circuit.save(out))
    result["html"] = str(write_circuit_page(circuit, out / "circuit.html", args.link_template or LINK_TEMPLATE))
    return result
