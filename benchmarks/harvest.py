"""Harvest and cache-read throughput next to what the hardware gives without us.

1. Harvest: tokens/s of `Harvester.iter_rows` (fast HF path and bridge path, rows masked and
   moved to the CPU) on the bundled SmolLM2 up to blocks.6.hook_resid_post, next to a plain
   forward of a separately loaded HF model whose decoder layers are truncated to 7 (no hooks).
   Target on CPU: harvest time <= 1.15x the plain forward's.
2. Cache read: GB/s of `ActivationCache.batches` (shuffled, sequential) and `.activations()`
   next to reading the same shard files with `np.fromfile` (page cache warm for both).

Every number is the best of --repeats runs (the machine may be shared).
    python benchmarks/harvest.py [--json] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from _timing import best_of

from sae.activations import Harvester, open_cache, pack_blocks
from sae.activations.store import CacheWriter
from sae.lm import DEFAULT_MODEL, _fp32_copy_dir, bundled_gguf_path, load_model

CORPUS = Path(__file__).resolve().parents[1] / "sae" / "_bundled" / "wikitext-2-valid.txt"
HOOK, LAYER = "blocks.6.hook_resid_post", 6


def plain_forward(n_layers: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """A plain HF model (SDPA, no bridge, no hooks) cut after `n_layers` decoder layers."""
    from transformers import AutoModelForCausalLM

    folder = _fp32_copy_dir(bundled_gguf_path())
    base = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32,
                                                attn_implementation="sdpa").model
    base.layers = base.layers[:n_layers]
    base.config.num_hidden_layers = n_layers
    base.eval()

    @torch.inference_mode()
    def run(tokens_NT):
        return base(input_ids=tokens_NT, use_cache=False).last_hidden_state

    return run


def bench_harvest(batch: int, context: int, repeats: int) -> list[dict]:
    model = load_model(DEFAULT_MODEL)
    blocks = pack_blocks(str(CORPUS), model.tokenizer, context, batch * (context - 1))
    tokens_NT, keep_NT = blocks.tokens_NT, blocks.keep_NT
    n_tok = tokens_NT.numel()
    plain = plain_forward(LAYER + 1)
    rows = []
    t_plain = best_of(lambda: plain(tokens_NT), repeats, warmup=1)
    rows.append({"what": f"plain HF forward to layer {LAYER} (sdpa, no hooks)", "s": t_plain})
    for fast in (True, False):
        harvester = Harvester(model, [HOOK], fast=fast)
        t = best_of(lambda h=harvester: list(h.iter_rows(tokens_NT, keep_NT, batch)), repeats, warmup=1)
        name = "Harvester fast (HF modules, sdpa)" if fast else "Harvester bridge (run_with_cache)"
        rows.append({"what": name, "s": t})
    for row in rows:
        row.update(tokens=n_tok, tok_per_s=n_tok / row["s"], vs_plain=row["s"] / t_plain)
    return rows


def write_cache(folder: Path, n_shards: int, rows: int, d_in: int) -> None:
    """A cache of random fp32 rows in the real on-disk format."""
    writer = CacheWriter(folder, {"model": "random", "hooks": [HOOK], "dtype": "float32",
                                  "d_in": {HOOK: d_in}, "context": 128})
    gen = torch.Generator().manual_seed(0)
    n_blocks = rows // 127
    for _ in range(n_shards):
        acts = torch.randn(rows, d_in, generator=gen)
        index = {"token_id": torch.zeros(rows, dtype=torch.int32),
                 "block": torch.zeros(rows, dtype=torch.int32),
                 "pos": torch.zeros(rows, dtype=torch.int32)}
        writer.add_shard({HOOK: acts}, index, torch.zeros(n_blocks, 128, dtype=torch.int64))
    writer.finish()


def bench_read(repeats: int, n_shards: int = 4, rows: int = 16_384, d_in: int = 576,
               batch: int = 4096) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "cache"
        write_cache(folder, n_shards, rows, d_in)
        cache = open_cache(folder)
        cache.activations()  # checksums verified once, pages warm
        files = sorted((folder / "acts" / HOOK).glob("*.safetensors"))
        n_bytes = n_shards * rows * d_in * 4

        def drain(it):
            for _ in it:
                pass

        runs = {
            "np.fromfile of the shard files": lambda: [np.fromfile(f, dtype=np.uint8) for f in files],
            "ActivationCache.activations()": cache.activations,
            "batches(4096), sequential": lambda: drain(cache.batches(batch, shuffle=False)),
            "batches(4096), shuffled": lambda: drain(cache.batches(batch, shuffle=True)),
        }
        out = []
        for name, fn in runs.items():
            t = best_of(fn, repeats, warmup=1)
            out.append({"what": name, "s": t, "bytes": n_bytes, "GB_per_s": n_bytes / t / 1e9})
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--context", type=int, default=128)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    harvest = bench_harvest(args.batch, args.context, args.repeats)
    read = bench_read(args.repeats)
    if args.json:
        print(json.dumps({"threads": torch.get_num_threads(), "harvest": harvest, "read": read}))
        return
    print(f"Harvest, SmolLM2-135M up to {HOOK}, {args.batch}x{args.context} tokens, "
          f"{torch.get_num_threads()} threads, best of {args.repeats}")
    print(f"{'':44s} {'ms':>9s} {'tok/s':>9s} {'x plain':>8s}")
    for r in harvest:
        print(f"{r['what']:44s} {r['s'] * 1e3:9.1f} {r['tok_per_s']:9.0f} {r['vs_plain']:8.3f}")
    print(f"\nCache read, {read[0]['bytes'] / 1e6:.0f} MB of fp32 rows")
    print(f"{'':44s} {'ms':>9s} {'GB/s':>9s}")
    for r in read:
        print(f"{r['what']:44s} {r['s'] * 1e3:9.1f} {r['GB_per_s']:9.2f}")


if __name__ == "__main__":
    main()
