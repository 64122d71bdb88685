"""Where training batches come from: an activation cache, or the model itself, streamed.

Both yield dicts hook -> [B, D] rows, in an order fixed by the seed, and can start at any batch
(for exact resume). The last `holdout_frac` of the rows (in harvest order) never reach training;
`holdout()` returns them for evaluation.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from ..activations import ActivationCache, Harvester, open_cache, pack_blocks
from ..config import DataConfig
from ..lm import LoadedModel, load_model


class CacheSource:
    """Shuffled batches from a cache folder (several hooks share the same row order)."""

    def __init__(self, cfg: DataConfig, hooks: list[str], batch_size: int, seed: int, buffer_rows: int):
        self.cache: ActivationCache = open_cache(cfg.cache)
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
                                  epochs=None, skip_batches=skip)

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
    """Activations harvested on the fly, shuffled within chunks of `chunk_blocks` blocks.

    Chunk c's rows are permuted with seed + c and cut into whole batches (a remainder smaller
    than a batch is dropped), so resuming at batch n harvests only from the chunk holding it.
    """

    def __init__(self, cfg: DataConfig, hooks: list[str], batch_size: int, seed: int, n_rows: int,
                 model: LoadedModel | None = None, chunk_blocks: int = 256):
        self.model = model or load_model(cfg.model)
        self.harvester = Harvester(self.model, hooks)
        hold = int(n_rows * cfg.holdout_frac / (1 - cfg.holdout_frac)) if cfg.holdout_frac else 0
        self.blocks = pack_blocks(cfg.source, self.model.tokenizer, cfg.context, n_rows + hold,
                                  text_field=cfg.text_field)
        self.hooks, self.batch_size, self.seed = hooks, batch_size, seed
        self.harvest_batch, self.chunk_blocks = cfg.harvest_batch, chunk_blocks
        n_blocks = self.blocks.tokens_NT.shape[0]
        self.n_hold_blocks = -(-hold // (cfg.context)) if hold else 0
        self.n_train_blocks = n_blocks - self.n_hold_blocks
        self._d_in = self.harvester.d_in()

    def d_in(self, hook: str) -> int:
        return self._d_in[hook]

    def _chunk_batches(self, c: int) -> int:
        b0, b1 = c * self.chunk_blocks, min(self.n_train_blocks, (c + 1) * self.chunk_blocks)
        return int(self.blocks.keep_NT[b0:b1].sum()) // self.batch_size

    def _harvest(self, b0: int, b1: int) -> dict[str, torch.Tensor]:
        parts: dict[str, list[torch.Tensor]] = {h: [] for h in self.hooks}
        rows_iter = self.harvester.iter_rows(self.blocks.tokens_NT[b0:b1], self.blocks.keep_NT[b0:b1],
                                             self.harvest_batch, torch.float32)
        for rows in rows_iter:
            for h, r in rows.items():
                parts[h].append(r)
        return {h: torch.cat(p) for h, p in parts.items()}

    def batches(self, skip: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        n_chunks = -(-self.n_train_blocks // self.chunk_blocks)
        epoch = 0
        while True:
            for c in range(n_chunks):
                n_batches = self._chunk_batches(c)
                if skip >= n_batches:
                    skip -= n_batches
                    continue
                b0, b1 = c * self.chunk_blocks, min(self.n_train_blocks, (c + 1) * self.chunk_blocks)
                rows = self._harvest(b0, b1)
                gen = torch.Generator().manual_seed(self.seed + 1_000_003 * epoch + c)
                perm = torch.randperm(next(iter(rows.values())).shape[0], generator=gen)
                for b in range(skip, n_batches):
                    sel = perm[b * self.batch_size:(b + 1) * self.batch_size]
                    yield {h: r[sel] for h, r in rows.items()}
                skip = 0
            epoch += 1

    def sample(self, n: int) -> dict[str, torch.Tensor]:
        blocks_needed = max(1, -(-n // self.blocks.tokens_NT.shape[1]))
        rows = self._harvest(0, min(self.n_train_blocks, blocks_needed))
        return {h: r[:n] for h, r in rows.items()}

    def holdout(self, max_rows: int) -> dict[str, torch.Tensor]:
        if not self.n_hold_blocks:
            return {}
        rows = self._harvest(self.n_train_blocks, self.blocks.tokens_NT.shape[0])
        return {h: r[:max_rows] for h, r in rows.items()}


def make_source(cfg: DataConfig, hooks: list[str], batch_size: int, seed: int, n_rows: int,
                buffer_rows: int) -> CacheSource | StreamSource:
    """A CacheSource when `cfg.cache` is set, else a StreamSource over `cfg.source`."""
    if cfg.cache:
        return CacheSource(cfg, hooks, batch_size, seed, buffer_rows)
    return StreamSource(cfg, hooks, batch_size, seed, n_rows)
