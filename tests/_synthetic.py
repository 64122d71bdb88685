"""Synthetic activation caches with a known sparse structure, written through the real writer."""

from __future__ import annotations

from pathlib import Path

import torch

from sae.activations.store import CacheWriter


def sparse_data(n_rows: int, d_in: int, n_atoms: int = 64, per_row: int = 4, seed: int = 0,
                noise: float = 0.01) -> torch.Tensor:
    """Rows that are sums of `per_row` random unit atoms with positive weights, plus noise and an offset."""
    gen = torch.Generator().manual_seed(seed)
    atoms_AD = torch.randn(n_atoms, d_in, generator=gen)
    atoms_AD /= atoms_AD.norm(dim=1, keepdim=True)
    idx_NK = torch.randint(0, n_atoms, (n_rows, per_row), generator=gen)
    coef_NK = torch.rand(n_rows, per_row, generator=gen) * 2 + 0.5
    x_ND = torch.einsum("nk,nkd->nd", coef_NK, atoms_AD[idx_NK])
    offset_D = torch.randn(d_in, generator=gen)
    return x_ND + offset_D + noise * torch.randn(n_rows, d_in, generator=gen)


def write_cache(out: Path, acts: dict[str, torch.Tensor], context: int = 16, rows_per_shard: int = 512) -> Path:
    """A complete cache folder holding `acts` (hook -> [N, D]) in shards of `rows_per_shard` rows."""
    n = next(iter(acts.values())).shape[0]
    assert n % context == 0
    settings = {"model": "synthetic", "hooks": list(acts), "dtype": "float32", "context": context,
                "bos": "none", "text_field": "text", "n_tokens": n, "source": "synthetic", "batch": 1,
                "tokenizer": {}, "d_in": {h: int(a.shape[1]) for h, a in acts.items()}}
    writer = CacheWriter(out, settings)
    blocks_per_shard = rows_per_shard // context
    for b0 in range(0, n // context, blocks_per_shard):
        r0, r1 = b0 * context, min(n, (b0 + blocks_per_shard) * context)
        nb = (r1 - r0) // context
        index = {"token_id": torch.zeros(r1 - r0, dtype=torch.int32),
                 "block": (torch.arange(r0, r1) // context).to(torch.int32),
                 "pos": (torch.arange(r0, r1) % context).to(torch.int32)}
        writer.add_shard({h: a[r0:r1] for h, a in acts.items()}, index,
                         torch.zeros(nb, context, dtype=torch.int32))
    writer.finish(n_rows=n)
    return out
