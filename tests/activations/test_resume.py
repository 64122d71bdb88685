"""Kill `sae cache` mid-run (SIGKILL), rerun it, and get a cache equal bit for bit to an
uninterrupted run's; no torn shard is ever listed in the manifest."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from sae.activations import CacheError, build_cache, open_cache
from sae.activations.store import sha256_file
from tests._data import CORPUS

HOOKS = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_pre"]
N_TOKENS, CONTEXT, BATCH = 8000, 32, 2

# --shard-mb 0.000001 sets the shard size to its minimum (one batch of blocks per shard):
# ~130 shards for 8000 rows, so a kill lands between shards with high probability.

def cli_args(model_dir, corpus, out):
    args = ["--model", str(model_dir), "--data", str(corpus), "--tokens", str(N_TOKENS),
            "--context", str(CONTEXT), "--batch", str(BATCH), "--out", str(out), "--shard-mb", "0.000001",
            "--json"]
    for hook in HOOKS:
        args += ["--hook", hook]
    return ["cache", *args]


def start(args):
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return subprocess.Popen([sys.executable, "-m", "sae", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def read_manifest(out):
    try:
        return json.loads((out / "manifest.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def kill_after_first_shard(proc, out, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        manifest = read_manifest(out)
        if manifest and manifest["shards"]:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return
        if proc.poll() is not None:
            pytest.fail(f"sae cache ended before writing a shard:\n{proc.stderr.read()}")
        time.sleep(0.005)
    proc.kill()
    pytest.fail("no shard appeared in the manifest in time")


def test_kill_and_resume_equals_uninterrupted_run(tiny_model, tiny_model_dir, tmp_path):
    corpus = CORPUS
    out = tmp_path / "killed"
    proc = start(cli_args(tiny_model_dir, corpus, out))
    kill_after_first_shard(proc, out)

    manifest = read_manifest(out)
    assert manifest["status"] == "in_progress", "the run finished before it was killed"
    assert 0 < manifest["n_rows"] < N_TOKENS
    for shard in manifest["shards"]:  # every listed shard is whole
        for rel, digest in shard["sha256"].items():
            assert sha256_file(out / rel) == digest, rel
    with pytest.raises(CacheError, match="unfinished"):
        open_cache(out)

    proc = start(cli_args(tiny_model_dir, corpus, out))
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    result = json.loads(stdout.strip().splitlines()[-1])
    assert result["tokens"] == N_TOKENS and result["resumed_from"] == manifest["n_rows"]

    ref = tmp_path / "uninterrupted"
    build_cache(tiny_model, str(corpus), HOOKS, N_TOKENS, ref, context=CONTEXT, batch=BATCH,
                shard_bytes=1, progress=False)
    assert json.loads((out / "manifest.json").read_text()) == \
        json.loads((ref / "manifest.json").read_text())
    files = sorted(p.relative_to(ref) for p in ref.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    for rel in files:
        if rel.suffix == ".safetensors":
            got, want = load_file(out / rel), load_file(ref / rel)
            assert got.keys() == want.keys()
            for key in want:
                assert torch.equal(got[key], want[key]), (rel, key)
    a, b = open_cache(out), open_cache(ref)
    for hook in HOOKS:
        assert torch.equal(a.activations(hook), b.activations(hook))
