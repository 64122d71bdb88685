"""On a GPU, `Harvester.iter_rows` (host-made row indices, copies to page-locked memory on a side
stream, one batch behind the forward) yields the same rows, in the same order, as on the CPU."""

from __future__ import annotations

import pytest
import torch

from sae.activations import Harvester
from sae.lm import load_model

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

HOOKS = ["blocks.0.hook_resid_post", "blocks.2.hook_resid_pre"]


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "bridge"])
def test_iter_rows_on_cuda_equals_cpu(tiny_model_dir, fast):
    tokens_NT = torch.randint(3, 500, (7, 24), generator=torch.Generator().manual_seed(0))
    keep_NT = torch.rand(7, 24, generator=torch.Generator().manual_seed(1)) > 0.3
    parts = {}
    for device in ("cpu", "cuda"):
        harvester = Harvester(load_model(str(tiny_model_dir), device=device), HOOKS, fast=fast)
        parts[device] = list(harvester.iter_rows(tokens_NT, keep_NT, batch=3))
    assert len(parts["cuda"]) == len(parts["cpu"]) == 3
    for on_gpu, on_cpu in zip(parts["cuda"], parts["cpu"], strict=True):
        for hook in HOOKS:
            assert on_gpu[hook].device.type == "cpu" and on_gpu[hook].is_pinned()
            torch.testing.assert_close(on_gpu[hook], on_cpu[hook], rtol=1e-4, atol=1e-4)


def test_cache_batches_in_pinned_memory(tmp_path):
    """Training on a GPU reads batches gathered into page-locked memory (asynchronous copies),
    with the same rows as unpinned ones."""
    from sae.activations import open_cache
    from tests._synthetic import sparse_data, write_cache

    cache = open_cache(write_cache(tmp_path / "c", {"blocks.0.hook_resid_post": sparse_data(1024, 8, seed=0)}))
    plain = list(cache.batches(256, seed=3))
    pinned = list(cache.batches(256, seed=3, pin_memory=True))
    assert len(pinned) == len(plain) == 4
    for a, b in zip(pinned, plain, strict=True):
        assert a.is_pinned() and torch.equal(a, b)


def test_stream_source_keeps_training_rows_on_the_gpu(tiny_model_dir, tiny_corpus):
    """Training from a stream on a GPU: batches stay on the device (no host round trip) and hold
    the rows the CPU model gives, in the same order."""
    from sae.config import DataConfig
    from sae.train.source import StreamSource

    cfg = DataConfig(model=str(tiny_model_dir), source=str(tiny_corpus), context=32, harvest_batch=8,
                     hooks=["blocks.0.hook_resid_post"], holdout_frac=0.0)
    firsts = {}
    for device in ("cpu", "cuda"):
        src = StreamSource(cfg, ["blocks.0.hook_resid_post"], 64, seed=0, n_rows=4096,
                           model=load_model(str(tiny_model_dir), device=device), chunk_blocks=8)
        firsts[device] = next(iter(src.batches()))["blocks.0.hook_resid_post"]
    assert firsts["cuda"].device.type == "cuda"
    torch.testing.assert_close(firsts["cuda"].cpu(), firsts["cpu"], rtol=1e-4, atol=1e-4)
