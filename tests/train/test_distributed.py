"""Data parallelism with torchrun (Gloo on CPU): 2 ranks x batch B equal 1 process x batch 2B."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests._synthetic import sparse_data, write_cache

HOOK = "blocks.0.hook_resid_post"


def _config(tmp_path, cache, out, batch):
    raw = {"data": {"cache": str(cache), "holdout_frac": 0.0},
           "sae": {"d_sae": 64, "activation": "topk", "k": 4},
           # Shards of 512 rows and a 1024-row buffer: both batch sizes cut the same shuffled pool,
           # so each 2B batch is exactly the union of two consecutive B batches. AuxK is off
           # because its normalisation is per rank.
           "train": {"tokens": 128 * 2 * 16, "batch_size": batch, "lr": 3e-3, "warmup_steps": 2,
                     "aux_k": 0, "log_every": 4, "checkpoint_every": 0, "progress": False,
                     "shuffle_buffer": 1024, "out": str(out)}}
    path = tmp_path / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("torchrun") is None and not os.path.exists(os.path.join(
    os.path.dirname(sys.executable), "torchrun")), reason="torchrun not found")
def test_two_ranks_match_one_process_with_double_batch(tmp_path):
    cache = write_cache(tmp_path / "c", {HOOK: sparse_data(4096, 16, seed=5)})
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    one = subprocess.run([sys.executable, "-m", "sae", "train", str(_config(tmp_path, cache, tmp_path / "one", 256)),
                          "--json"], env=env, capture_output=True, text=True)
    assert one.returncode == 0, one.stderr[-2000:]
    proc = subprocess.run([torchrun, "--standalone", "--nproc-per-node", "2", "-m", "sae", "train",
                           str(_config(tmp_path, cache, tmp_path / "two", 128)), "--json"],
                          env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    a = load_file(str(tmp_path / "one" / "saes" / HOOK / "sae_weights.safetensors"))
    b = load_file(str(tmp_path / "two" / "saes" / HOOK / "sae_weights.safetensors"))
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=2e-5, rtol=1e-4, msg=lambda m, name=name: f"{name}: {m}")
