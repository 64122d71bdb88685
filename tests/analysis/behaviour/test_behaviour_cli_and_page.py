"""`sae behaviour` end to end on the planted model, and the offline behaviour page."""

from __future__ import annotations

import argparse
import json

from sae.analysis.behaviour.cli_snippet import add_parser, cmd_behaviour
from sae.analysis.behaviour.datasets import write_jsonl
from sae.dashboard.behaviour import render_behaviour_page
from sae.formats import save
from tests.analysis.behaviour._planted import PLANTED


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["behaviour", *argv])


def test_cli_writes_json_and_page(planted, tmp_path):
    model, sae, data = planted
    sae_dir = save(sae, tmp_path / "sae")
    data_file = write_jsonl(data, tmp_path / "planted.jsonl")
    out = tmp_path / "out"
    args = _parse(["--sae", str(sae_dir), "--model", model.name, "--dataset", str(data_file), "--out", str(out),
                   "--n-top", "3", "--scales=-1,0,1", "--n-steer", "1", "--ce-tokens", "256",
                   "--label-tokens", "512", "--removal-candidates", "3", "--removal-steps", "1", "--json",
                   "--device", "cpu"])
    result = cmd_behaviour(args)
    json.dumps(result)  # JSON-ready
    assert result["clean"]["rate"] == 1.0
    assert result["top_latents"][0]["latent"] == PLANTED and result["probes"]["best_latent"] == PLANTED
    assert result["steering"][0]["latent"] == PLANTED and result["removal"]["chosen"] == [PLANTED]
    assert "per_latent" not in result
    full = json.loads((out / "behaviour.json").read_text())
    assert len(full["per_latent"]["auroc"]) == sae.d_sae
    page = (out / "index.html").read_text()
    assert page.count("Plotly.newPlot") >= 4 and f"../features/index.html#latent-{PLANTED}" in page


def test_page_escapes_every_string_and_inlines_plotly_once():
    evil = "<script>alert(1)</script>"
    report = {
        "meta": {"dataset": evil, "hook": "blocks.1.hook_resid_post"},
        "clean": {"rate": 0.5}, "ranking": {"test": "x", "fdr": 0.05, "n_significant": 1},
        "top_latents": [{"latent": 7, "auroc": 0.9, "test_auroc": 0.8, "cohen_d": 1.0, "q": 0.01,
                         "attribution": 0.1, "label": evil}],
        "probes": {"dense_probe_auroc": 0.9, "sparse_probe_auroc": {"1": 0.8}, "best_latent": 7,
                   "best_latent_auroc": 0.8},
        "steering": [{"latent": 7, "mode": "add", "scales": [-1, 0, 1], "behaviour": [0, 1, 2],
                      "ce_delta": [0.1, 0, 0.1], "unit": 1.0}],
        "removal": {"curve": [{"latents": [], "behaviour": 1.0, "ce_delta": 0.0, "behaviour_test": 1.0}]},
        "labels": [{"latent": 7, "label": evil, "contexts": [evil], "context_acts": [1.0], "suppressed": [evil]}],
        "distributions": {"7": {"behaviour": [1.0, 2.0], "control": [0.0, 0.1]}},
        "per_latent": {"auroc": [0.5] * 8, "attribution": [0.0] * 8},
    }
    page = render_behaviour_page(report, features_href="feat.html#latent-{id}")
    assert evil not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert page.count("<script>") == 1 + page.count("Plotly.newPlot")  # plotly.js once, then one per figure
    assert "feat.html#latent-7" in page


def test_parser_lines_do_not_import_torch():
    import subprocess
    import sys

    code = ("import sys, argparse; from sae.analysis.behaviour.cli_snippet import add_parser; "
            "add_parser(argparse.ArgumentParser().add_subparsers()); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
