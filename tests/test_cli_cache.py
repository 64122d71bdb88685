"""`sae cache`: a working run, and bad input that gets a clear error (exit 2) and leaves the out
folder as it was."""

from __future__ import annotations

import csv
import hashlib
import json

import pytest
import torch

import sae.lm
from sae.activations import open_cache
from sae.cli import main

HOOK = "blocks.0.hook_resid_post"


@pytest.fixture
def cli(monkeypatch, tiny_model, tiny_model_dir):
    """Run `sae cache` in-process; the tiny model folder loads from the session fixture."""
    real = sae.lm.load_model

    def load_model(spec, *args, **kwargs):
        return tiny_model if spec == str(tiny_model_dir) else real(spec, *args, **kwargs)

    monkeypatch.setattr(sae.lm, "load_model", load_model)

    def run(*extra, data, out, hooks=(HOOK,), tokens=200, model=str(tiny_model_dir)):
        args = ["cache", "--model", model, "--data", str(data), "--tokens", str(tokens),
                "--context", "32", "--out", str(out), *extra]
        for hook in hooks:
            args += ["--hook", hook]
        return main(args)

    return run


def snapshot(folder):
    """Every file under `folder` with a hash of its bytes (None when it does not exist)."""
    if not folder.exists():
        return None
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_cache_json_and_progress(cli, tiny_corpus, tmp_path, capsys):
    out = tmp_path / "c"
    assert cli("--json", data=tiny_corpus, out=out) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["tokens"] == 200 and result["out"] == str(out)
    assert open_cache(out).activations().shape == (200, 64)
    # Without --json a progress bar with tokens/s goes to stderr.
    assert cli(data=tiny_corpus, out=tmp_path / "d") == 0
    captured = capsys.readouterr()
    assert "tok/s" in captured.err and "harvest" in captured.err
    assert "tokens" in captured.out


def check_error(cli, capsys, out, *needles, **kwargs):
    before = snapshot(out)
    assert cli(out=out, **kwargs) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, err
    assert snapshot(out) == before
    return err


def test_unknown_hook_lists_close_names(cli, tiny_corpus, tmp_path, capsys):
    check_error(cli, capsys, tmp_path / "c", "Unknown hook 'blocks.0.hook_resid_pst'",
                "blocks.0.hook_resid_post", data=tiny_corpus, hooks=["blocks.0.hook_resid_pst"])
    assert not (tmp_path / "c").exists()


def test_missing_and_empty_data(cli, tmp_path, capsys):
    check_error(cli, capsys, tmp_path / "c", "does not exist", data=tmp_path / "nope.txt")
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    check_error(cli, capsys, tmp_path / "c", "holds no text", data=empty)
    assert not (tmp_path / "c").exists()


def test_missing_column(cli, tmp_path, capsys):
    path = tmp_path / "a.csv"
    with path.open("w", newline="") as fh:
        csv.writer(fh).writerows([["id", "body"], [1, "Some text here ."]])
    check_error(cli, capsys, tmp_path / "c", "no column 'text'", "id, body", "--text-field",
                data=path)
    assert not (tmp_path / "c").exists()


def test_more_tokens_than_the_data_holds(cli, tiny_corpus, tmp_path, capsys):
    err = check_error(cli, capsys, tmp_path / "c", "fewer than the 10,000,000 asked for",
                      data=tiny_corpus, tokens=10_000_000)
    assert "holds" in err and "Lower --tokens to at most" in err
    assert not (tmp_path / "c").exists()


def test_out_folder_that_is_not_a_cache(cli, tiny_corpus, tmp_path, capsys):
    out = tmp_path / "c"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    check_error(cli, capsys, out, "not an activation cache", data=tiny_corpus)
    (tmp_path / "f").write_text("a file")
    check_error(cli, capsys, tmp_path / "f", "is a file", data=tiny_corpus)


def test_resume_with_another_model_or_hooks(cli, tiny_corpus, tmp_path, capsys,
                                            tiny_native_model, monkeypatch):
    out = tmp_path / "c"
    assert cli("--json", data=tiny_corpus, out=out) == 0
    capsys.readouterr()
    check_error(cli, capsys, out, "hooks=", "Use another --out folder", data=tiny_corpus,
                hooks=[HOOK, "blocks.1.hook_resid_post"])
    check_error(cli, capsys, out, "n_tokens=", data=tiny_corpus, tokens=150)
    native = lambda *a, **k: tiny_native_model  # noqa: E731
    monkeypatch.setattr(sae.lm, "load_model", native)
    check_error(cli, capsys, out, "model=", "tiny-native", data=tiny_corpus, model="tiny-native")


def test_hub_name_offline_is_a_sentence(cli, tiny_corpus, tmp_path, capsys):
    """HF_HUB_OFFLINE=1 is set for the test session (conftest)."""
    check_error(cli, capsys, tmp_path / "c", "Could not load 'nobody/no-such-model'",
                "local model folder", data=tiny_corpus, model="nobody/no-such-model")
    check_error(cli, capsys, tmp_path / "c", "does not exist", data=tiny_corpus,
                model=str(tmp_path / "missing-model"))


@pytest.mark.slow
def test_smollm2_cache_equals_hf_hidden_states(tmp_path, capsys):
    """The real bundled model: rows equal a plain transformers forward's hidden_states[7]."""
    from transformers import AutoModelForCausalLM

    from tests._data import CORPUS

    out = tmp_path / "smol"
    code = main(["cache", "--model", "smollm2-135m-instruct", "--data", str(CORPUS),
                 "--hook", "blocks.6.hook_resid_post", "--tokens", "2000", "--out", str(out),
                 "--json"])
    assert code == 0, capsys.readouterr().err
    assert json.loads(capsys.readouterr().out)["tokens"] == 2000
    cache = open_cache(out)
    assert cache.manifest["d_in"] == {"blocks.6.hook_resid_post": 576}
    n_blocks = cache.manifest["n_blocks"]
    tokens_NT = torch.stack([cache.block_tokens(b) for b in range(n_blocks)]).long()
    folder = sae.lm._fp32_copy_dir(sae.lm.bundled_gguf_path())
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    with torch.inference_mode():
        hidden_NTD = hf(tokens_NT, output_hidden_states=True).hidden_states[7]
    want = hidden_NTD[cache.blocks().long(), cache.positions().long()]
    got = cache.activations()
    assert got.shape == want.shape == (2000, 576)
    assert float((got - want).norm() / want.norm()) <= 1e-5
