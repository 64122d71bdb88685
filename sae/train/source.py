"""Where training batches come from: an activation cache, or the model itself, streamed.

Both yield dicts hook -> [B, D] rows, in an order fixed by the seed, and can start at any batch
(for exact resume). Held-out rows never reach training; `holdout()` returns them for evaluation:
the last `holdout_frac` of a cache's rows, or the first chunks of a stream.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from ..activations import ActivationCache, Harvester, TokenBlocks, open_cache
from ..activations.tokens import iter_block_chunks
from ..config import DataConfig
from ..lm import LoadedModel, load_model


class CacheSource:
    """Shuffled batches from a cache folder (several hooks share the same row order)."""

    def __init__(self, cfg: DataConfig, hooks: list[str], batch_size: int, seed: int, buffer_rows: int,
                 pin_memory: bool = False):
        self.cache: ActivationCache = open_cache(cfg.cache)
        self.pin_memory = pin_memory
        for hook in hooks:
            if hook not in self.cache.hooks:
                raise ValueError(
                    f"The cache {cfg.cache} has no hook {hook!r} (it holds {', '.join(self.cache.hooks)})."
                )
        self.hooks, self.batch_size, self.seed, self.buffer_rows = hooks, batch_size, seed, buffer_rows
        n_hold = int(self.cache.n_rows * cfg.holdout_frac)
        self.train_range = (0, self.cache.n_rows - n_hold)
        self.holdout_range = (self.cache.n_rows - n_hold, self.cache.n_rows)
        if self.train_range[1] < batch_size:
            raise ValueError(
                f"The cache holds {self.train_range[1]:,} training rows, fewer than one batch of {batch_size:,}."
            )

    def d_in(self, hook: str) -> int:
        return self.cache.d_in(hook)

    def batches(self, skip: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        return self.cache.batches(self.batch_size, shuffle=True, seed=self.seed, hooks=self.hooks,
                                  row_range=self.train_range, buffer_rows=self.buffer_rows,
                                  epochs=None, skip_batches=skip, pin_memory=self.pin_memory)

    def sample(self, n: int) -> dict[str, torch.Tensor]:
        """n training rows (a fixed random subset) for initialisation."""
        gen = torch.Generator().manual_seed(self.seed + 7919)
        lo, hi = self.train_range
        rows = torch.randperm(hi - lo, generator=gen)[: min(n, hi - lo)] + lo
        return self.cache.gather(rows.sort().values, self.hooks)

    def holdout(self, max_rows: int) -> dict[str, torch.Tensor]:
        lo, hi = self.holdout_range
        rows = torch.arange(lo, min(hi, lo + max_rows))
        return self.cache.gather(rows, self.hooks) if len(rows) else {}


class StreamSource:
    """Activations harvested on the fly from a lazily tokenised source, in chunks of blocks.

    The text is packed lazily (memory stays bounded for endless `hf:` streams). The first
    `hold_chunks` chunks are kept for evaluation. Training chunk c's rows are permuted with
    seed + c and cut into whole batches; the remainder smaller than a batch is dropped, which
    keeps chunks independent, so a resumed run skips whole chunks by counting their rows without
    running the model on them. Chunks hold at least 32 batches by default, so at most ~3% of the
    rows are dropped. When the source ends, the next epoch starts over with new permutations.
    """

    def __init__(self, cfg: DataConfig, hooks: list[str], batch_size: int, seed: int, n_rows: int,
                 model: LoadedModel | None = None, chunk_blocks: int | None = None):
        self.cfg = cfg
        if chunk_blocks is None:
            chunk_blocks = max(256, -(-32 * batch_size // (cfg.context - 1)))
        self.model = model or load_model(cfg.model)
        self.harvester = Harvester(self.model, hooks)
        self.hooks, self.batch_size, self.seed = hooks, batch_size, seed
        self.chunk_blocks = chunk_blocks
        rows_per_chunk = chunk_blocks * (cfg.context - 1)
        hold_rows = min(65_536, int(n_rows * cfg.holdout_frac)) if cfg.holdout_frac else 0
        self.hold_chunks = -(-hold_rows // rows_per_chunk)
        self._d_in = self.harvester.d_in()

    def d_in(self, hook: str) -> int:
        return self._d_in[hook]

    def _chunks(self) -> Iterator[TokenBlocks]:
        return iter_block_chunks(self.cfg.source, self.model.tokenizer, self.cfg.context, self.chunk_blocks,
                                 text_field=self.cfg.text_field)

    def _train_chunks(self) -> Iterator[TokenBlocks]:
        """Training chunks forever (epoch after epoch), the held-out chunks left out."""
        while True:
            n_train = 0
            for i, chunk in enumerate(self._chunks()):
                if i >= self.hold_chunks:
                    n_train += 1
                    yield chunk
            if n_train == 0:
                raise ValueError(f"{self.cfg.source} holds no text beyond the held-out chunks; "
                                 f"lower data.holdout_frac or use more text.")

    def _harvest(self, blocks: TokenBlocks, to_host: bool = True) -> dict[str, torch.Tensor]:
        parts: dict[str, list[torch.Tensor]] = {h: [] for h in self.hooks}
        for rows in self.harvester.iter_rows(blocks.tokens_NT, blocks.keep_NT, self.cfg.harvest_batch,
                                             torch.float32, to_host=to_host):
            for h, r in rows.items():
                parts[h].append(r)
        return {h: torch.cat(p) for h, p in parts.items()}

    def batches(self, skip: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        for c, chunk in enumerate(self._train_chunks()):
            n_batches = chunk.n_rows // self.batch_size
            if skip >= n_batches:
                skip -= n_batches
                continue
            # Training rows stay where the model ran: on a GPU, no round trip through the host.
            rows = self._harvest(chunk, to_host=False)
            gen = torch.Generator().manual_seed(self.seed + c)
            perm = torch.randperm(chunk.n_rows, generator=gen)
            for b in range(skip, n_batches):
                sel = perm[b * self.batch_size:(b + 1) * self.batch_size]
                yield {h: r[sel] for h, r in rows.items()}
            skip = 0

    def sample(self, n: int) -> dict[str, torch.Tensor]:
        rows = self._harvest(next(self._train_chunks()))
        return {h: r[:n] for h, r in rows.items()}

    def holdout(self, max_rows: int) -> dict[str, torch.Tensor]:
        parts: dict[str, list[torch.Tensor]] = {h: [] for h in self.hooks}
        for i, chunk in enumerate(self._chunks()):
            if i >= self.hold_chunks:
                break
            for h, r in self._harvest(chunk).items():
                parts[h].append(r)
        return {h: torch.cat(p)[:max_rows] for h, p in parts.items() if p}


def make_source(cfg: DataConfig, hooks: list[str], batch_size: int, seed: int, n_rows: int,
                buffer_rows: int, pin_memory: bool = False) -> CacheSource | StreamSource:
    """A CacheSource when `cfg.cache` is set (batches page-locked with `pin_memory`, for a GPU),
    else a StreamSource over `cfg.source`."""
    if cfg.cache:
        return CacheSource(cfg, hooks, batch_size, seed, buffer_rows, pin_memory)
    return StreamSource(cfg, hooks, batch_size, seed, n_rows)
