"""Text -> token blocks -> activations (harvest) -> on-disk cache -> shuffled batches."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..lm import LoadedModel, dtype_name, load_model, parse_dtype
from .harvest import Harvester, HookError, validate_hooks
from .store import ActivationCache, CacheError, CacheWriter, open_cache, sha256_file
from .tokens import DataError, TokenBlocks, iter_texts, pack_blocks

__all__ = [
    "ActivationCache", "CacheError", "CacheResult", "DataError", "Harvester", "HookError",
    "TokenBlocks", "build_cache", "iter_texts", "open_cache", "pack_blocks", "validate_hooks",
]

_SHARD_BYTES = 64 << 20


@dataclass
class CacheResult:
    """What `build_cache` did."""

    tokens: int
    """Activation rows in the cache."""
    seconds: float
    """Wall time of this call (model loading excluded)."""
    tokens_per_s: float
    """Rows harvested per second in this call (0 when nothing was left to do)."""
    out: str
    """The cache folder."""
    resumed_from: int
    """Rows that were already on disk when this call started."""


def _source_id(source: str) -> dict[str, Any]:
    path = Path(source).expanduser()
    if source.startswith("hf:") or not path.is_file():
        return {"source": source}
    return {"source": str(path.name), "source_sha256": sha256_file(path)}


def _settings(model: LoadedModel, blocks_cfg: dict[str, Any], hooks: list[str], dtype: torch.dtype,
              batch: int) -> dict[str, Any]:
    tok = model.tokenizer
    return {
        "model": model.name,
        "hooks": list(hooks),
        "dtype": dtype_name(dtype),
        "tokenizer": {"name": getattr(tok, "name_or_path", ""), "vocab_size": len(tok),
                      "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id},
        **blocks_cfg,
        "batch": batch,
    }


def build_cache(model: LoadedModel | str, source: str, hooks: list[str], n_tokens: int, out: str | Path,
                context: int = 128, dtype: str | torch.dtype = "float32", batch: int = 8,
                bos: str = "block", text_field: str = "text", progress: bool = True,
                shard_bytes: int = _SHARD_BYTES) -> CacheResult:
    """Harvest `n_tokens` activation rows of `hooks` over `source` into the cache folder `out`.

    Everything that can be checked before writing is checked first (hooks, data, folder), so bad
    input leaves nothing behind. Rerunning after an interruption continues where it stopped.
    """
    torch_dtype = parse_dtype(dtype)
    if isinstance(model, str):
        model = load_model(model, dtype=torch_dtype)
    validate_hooks(model, hooks)
    blocks = pack_blocks(source, model.tokenizer, context, n_tokens, bos=bos, text_field=text_field)
    harvester = Harvester(model, hooks)
    blocks_cfg = {"context": context, "bos": bos, "text_field": text_field, "n_tokens": n_tokens,
                  **_source_id(source)}
    d_in = harvester.d_in()
    writer = CacheWriter(out, _settings(model, blocks_cfg, hooks, torch_dtype, batch) | {"d_in": d_in})
    start_rows = int(writer.manifest["n_rows"])
    t0 = time.perf_counter()
    if not writer.complete:
        row_bytes = sum(d_in.values()) * torch.tensor([], dtype=torch_dtype).element_size()
        shard_blocks = max(batch, (shard_bytes // max(1, row_bytes * context)) // batch * batch)
        _harvest_into(writer, harvester, blocks, batch, shard_blocks, torch_dtype, progress)
        writer.finish(n_rows=int(writer.manifest["n_rows"]))
    seconds = time.perf_counter() - t0
    new_rows = int(writer.manifest["n_rows"]) - start_rows
    return CacheResult(tokens=int(writer.manifest["n_rows"]), seconds=seconds,
                       tokens_per_s=new_rows / seconds if new_rows else 0.0, out=str(out),
                       resumed_from=start_rows)


def _harvest_into(writer: CacheWriter, harvester: Harvester, blocks: TokenBlocks, batch: int,
                  shard_blocks: int, dtype: torch.dtype, progress: bool) -> None:
    from tqdm.auto import tqdm

    n_blocks = blocks.tokens_NT.shape[0]
    done = writer.done_blocks
    bar = tqdm(total=blocks.n_rows, initial=int(blocks.keep_NT[:done].sum()), unit="tok",
               unit_scale=True, desc="harvest", disable=not progress, smoothing=0.1)
    for b0 in range(done, n_blocks, shard_blocks):
        b1 = min(n_blocks, b0 + shard_blocks)
        toks_NT, keep_NT = blocks.tokens_NT[b0:b1], blocks.keep_NT[b0:b1]
        parts: dict[str, list[torch.Tensor]] = {h: [] for h in harvester.hooks}
        for rows in harvester.iter_rows(toks_NT, keep_NT, batch, dtype):
            for h, r in rows.items():
                parts[h].append(r)
            bar.update(int(next(iter(rows.values())).shape[0]))
        block_id, pos = keep_NT.nonzero(as_tuple=True)
        index = {"token_id": toks_NT[keep_NT].to(torch.int32),
                 "block": (block_id + b0).to(torch.int32), "pos": pos.to(torch.int32)}
        writer.add_shard({h: torch.cat(p) for h, p in parts.items()}, index, toks_NT)
    bar.close()
