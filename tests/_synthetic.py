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


def centred_sae(model, source, activation: str = "topk", d_sae: int = 40, k: int = 5, seed: int = 1,
                hook: str = "blocks.1.hook_resid_post"):
    """A random SAE centred on the corpus's activations at `hook`, so that most latents fire sometimes."""
    from sae.activations import Harvester, pack_blocks
    from sae.config import SAEConfig
    from sae.model import SparseAutoencoder

    sae = SparseAutoencoder(SAEConfig(d_in=model.d_model, d_sae=d_sae, activation=activation, k=k,
                                      hook_name=hook), seed=seed)
    blocks = pack_blocks(str(source), model.tokenizer, 32, 256)
    with torch.inference_mode():
        x_BD = Harvester(model, [hook]).run(blocks.tokens_NT)[hook][blocks.keep_NT]
    with torch.no_grad():
        sae.b_dec.copy_(x_BD.mean(0))
        sae.W_enc.div_(x_BD.std(0).mean())
        sae.b_enc.fill_(-0.5 if activation == "relu" else 0.0)
    return sae
