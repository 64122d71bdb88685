"""The CLI end to end on the tiny model: cache -> train -> eval -> report, each with --json."""

from __future__ import annotations

import json

import yaml

from sae.cli import main

HOOK = "blocks.1.hook_resid_post"


def _json_line(capsys) -> dict:
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1, out
    return json.loads(out[0])


def test_pipeline_through_the_cli(tiny_model_dir, tiny_corpus, tmp_path, capsys):
    cache = tmp_path / "cache"
    assert main(["cache", "--model", str(tiny_model_dir), "--data", str(tiny_corpus), "--hook", HOOK,
                 "--tokens", "1500", "--context", "32", "--out", str(cache), "--json"]) == 0
    assert _json_line(capsys)["tokens"] == 1500
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({
        "data": {"cache": str(cache), "holdout_frac": 0.2},
        "sae": {"d_sae": 128, "activation": "topk", "k": 8},
        "train": {"tokens": 6000, "batch_size": 200, "lr": 3e-3, "warmup_steps": 3, "log_every": 5,
                  "checkpoint_every": 10, "out": str(tmp_path / "run")},
    }))
    assert main(["train", str(config), "--set", "train.seed=3", "--json"]) == 0
    result = _json_line(capsys)
    assert result["steps"] == 30 and result["l0"] == 8.0 and 0 < result["fvu"] < 1
    sae_dir = result["saes"][HOOK]
    assert main(["eval", "--sae", sae_dir, "--model", str(tiny_model_dir), "--data", str(tiny_corpus),
                 "--tokens", "400", "--context", "32", "--json"]) == 0
    ev = _json_line(capsys)
    assert {"l0", "fvu", "dead_frac", "ce_loss_recovered", "kl"} <= set(ev)
    assert ev["l0"] == 8.0 and ev["kl"] >= 0
    assert main(["report", str(tmp_path / "run"), "--json"]) == 0
    assert (tmp_path / "run" / "report.html").stat().st_size > 1_000_000  # plotly.js is inlined


def test_cli_errors_are_sentences(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump({"data": {"cache": str(tmp_path)}, "sae": {"d_sae": 8},
                                      "train": {"learning_rate": 1e-3}}))
    assert main(["train", str(config), "--json"]) == 2
    err = capsys.readouterr().err
    assert "Unknown key train.learning_rate. Did you mean 'lr'?" in err and "Traceback" not in err
    assert main(["train", str(tmp_path / "missing.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_help_does_not_import_torch():
    """`sae --help` answers instantly: no subcommand drags in torch at parse time."""
    import subprocess
    import sys

    code = ("import sys, sae.cli\ntry:\n    sae.cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "False"
