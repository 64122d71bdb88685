"""The on-disk cache: manifest, mapping rows back to text, batches, checksums."""

from __future__ import annotations

import json

import pytest
import torch

from sae.activations import CacheError, Harvester, build_cache, open_cache, pack_blocks
from sae.activations.store import sha256_file

HOOKS = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
N_TOKENS, CONTEXT, BATCH = 1000, 32, 2


@pytest.fixture(scope="module")
def cache(tiny_model, tiny_corpus, tmp_path_factory):
    """A 1000-row cache of two hooks; shard_bytes=1 gives the smallest shards (one batch each)."""
    out = tmp_path_factory.mktemp("cache") / "c"
    result = build_cache(tiny_model, str(tiny_corpus), HOOKS, N_TOKENS, out, context=CONTEXT,
                         batch=BATCH, shard_bytes=1, progress=False)
    assert result.tokens == N_TOKENS and result.resumed_from == 0 and result.tokens_per_s > 0
    return open_cache(out)


def test_manifest_says_what_made_it(cache, tiny_model, tiny_corpus):
    m = cache.manifest
    assert m["status"] == "complete"
    assert m["model"] == tiny_model.name
    assert m["hooks"] == HOOKS and m["d_in"] == {h: 64 for h in HOOKS}
    assert m["dtype"] == "float32" and m["context"] == CONTEXT and m["bos"] == "block"
    assert m["n_rows"] == N_TOKENS == cache.n_rows
    assert m["n_blocks"] == -(-N_TOKENS // (CONTEXT - 1))
    assert m["tokenizer"]["bos_token_id"] == tiny_model.tokenizer.bos_token_id
    assert m["source"] == tiny_corpus.name and m["source_sha256"] == sha256_file(tiny_corpus)
    assert len(m["shards"]) == -(-m["n_blocks"] // BATCH)
    for shard in m["shards"]:
        assert set(shard["sha256"]) == {f"acts/{h}/{shard['name']}" for h in HOOKS} | {
            f"index/{shard['name']}"}
        for rel, digest in shard["sha256"].items():
            assert sha256_file(cache.root / rel) == digest


def test_rows_equal_a_direct_harvest(cache, tiny_model, tiny_corpus):
    blocks = pack_blocks(str(tiny_corpus), tiny_model.tokenizer, CONTEXT, N_TOKENS)
    acts = Harvester(tiny_model, HOOKS).run(blocks.tokens_NT)
    for hook in HOOKS:
        assert torch.equal(cache.activations(hook), acts[hook][blocks.keep_NT])
    assert torch.equal(cache.tokens(), blocks.tokens_NT[blocks.keep_NT].to(torch.int32))


def test_every_row_maps_back_to_its_text(cache, tiny_model, tiny_corpus):
    tokens, blocks, positions = cache.tokens(), cache.blocks(), cache.positions()
    assert len(tokens) == len(blocks) == len(positions) == N_TOKENS
    for row in torch.randint(0, N_TOKENS, (50,), generator=torch.Generator().manual_seed(1)):
        block_tokens = cache.block_tokens(int(blocks[row]))
        assert block_tokens.shape == (CONTEXT,)
        assert block_tokens[0] == tiny_model.tokenizer.bos_token_id
        assert block_tokens[positions[row]] == tokens[row]
    # Decoding every row in order gives back the corpus text.
    text = tiny_model.tokenizer.decode(tokens.tolist())
    assert text.startswith(tiny_corpus.read_text(encoding="utf-8").splitlines()[0][:200])
    with pytest.raises(IndexError, match="out of range"):
        cache.block_tokens(10_000)


def test_batches_deterministic_per_seed_and_cover_every_row_once(cache):
    def epoch(seed):
        return list(cache.index_batches(64, seed=seed, buffer_rows=100, drop_last=False))

    a, b, c = epoch(0), epoch(0), epoch(1)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not torch.equal(torch.cat(a), torch.cat(c))
    for batches in (a, c):
        assert sorted(torch.cat(batches).tolist()) == list(range(N_TOKENS))
        assert [len(x) for x in batches[:-1]] == [64] * (len(batches) - 1)
    # Rows are mixed across shards: the first batch draws from several.
    shard_of = torch.searchsorted(cache.shard_starts, a[0], right=True) - 1
    assert len(shard_of.unique()) > 3
    # Not shuffled: harvest order.
    assert torch.equal(torch.cat(list(cache.index_batches(64, shuffle=False, drop_last=False))),
                       torch.arange(N_TOKENS))


def test_batches_values_skip_and_aligned_hooks(cache):
    acts = {h: cache.activations(h) for h in HOOKS}
    order = list(cache.index_batches(50, seed=3, buffer_rows=200))
    got = list(cache.batches(50, seed=3, buffer_rows=200, hooks=HOOKS))
    assert len(got) == len(order) == N_TOKENS // 50
    for rows, batch in zip(order, got, strict=True):
        for hook in HOOKS:
            assert torch.equal(batch[hook], acts[hook][rows])
    skipped = list(cache.batches(50, seed=3, buffer_rows=200, hooks=HOOKS, skip_batches=7))
    assert len(skipped) == len(got) - 7
    assert all(torch.equal(x[HOOKS[1]], y[HOOKS[1]]) for x, y in zip(skipped, got[7:], strict=True))
    # One hook gives bare tensors; epochs=2 repeats with a new order.
    two = list(cache.batches(100, seed=0, epochs=2, prefetch=0))
    assert len(two) == 2 * N_TOKENS // 100 and two[0].shape == (100, 64)
    assert not torch.equal(two[0], two[10])


def test_batches_row_range_and_errors(cache):
    rows = torch.cat(list(cache.index_batches(10, row_range=(100, 300), drop_last=False)))
    assert sorted(rows.tolist()) == list(range(100, 300))
    with pytest.raises(CacheError, match="outside"):
        next(cache.index_batches(10, row_range=(0, N_TOKENS + 1)))
    with pytest.raises(CacheError, match="no hook"):
        next(cache.batches(10, hooks="blocks.2.hook_resid_post"))


def test_gather_crosses_shards(cache):
    rows = torch.tensor([999, 0, 500, 31, 32, 1])
    got = cache.gather(rows, HOOKS)
    for hook in HOOKS:
        assert torch.equal(got[hook], cache.activations(hook)[rows])


def test_complete_cache_rerun_does_nothing(cache, tiny_model, tiny_corpus):
    before = (cache.root / "manifest.json").read_bytes()
    result = build_cache(tiny_model, str(tiny_corpus), HOOKS, N_TOKENS, cache.root,
                         context=CONTEXT, batch=BATCH, shard_bytes=1, progress=False)
    assert result.tokens == N_TOKENS and result.resumed_from == N_TOKENS
    assert (cache.root / "manifest.json").read_bytes() == before


def test_bf16_cache(tiny_model, tiny_corpus, tmp_path):
    out = tmp_path / "bf16"
    build_cache(tiny_model, str(tiny_corpus), HOOKS[:1], 200, out, context=CONTEXT,
                dtype="bf16", progress=False)
    cache = open_cache(out)
    assert cache.manifest["dtype"] == "bfloat16"
    acts = cache.activations()
    assert acts.dtype == torch.bfloat16 and acts.shape == (200, 64)
    assert next(cache.batches(16)).dtype == torch.bfloat16


def test_corrupt_shard_names_the_file(tiny_model, tiny_corpus, tmp_path):
    out = tmp_path / "c"
    build_cache(tiny_model, str(tiny_corpus), HOOKS[:1], 200, out, context=CONTEXT, batch=2,
                shard_bytes=1, progress=False)
    bad = out / "acts" / HOOKS[0] / "shard_00001.safetensors"
    data = bytearray(bad.read_bytes())
    data[-1] ^= 0xFF
    bad.write_bytes(bytes(data))
    cache = open_cache(out)
    cache.shard_acts(HOOKS[0], 0)  # an intact shard still reads
    with pytest.raises(CacheError, match=f"Checksum mismatch in {bad}"):
        cache.activations()
    with pytest.raises(CacheError, match="shard_00001"):
        list(open_cache(out).batches(8))
    assert open_cache(out, verify=False).activations().shape == (200, 64)


def test_unfinished_or_foreign_folders_do_not_open(tmp_path):
    with pytest.raises(CacheError, match="not an activation cache"):
        open_cache(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"status": "in_progress", "n_rows": 5}))
    with pytest.raises(CacheError, match="unfinished.*Rerun"):
        open_cache(tmp_path)
