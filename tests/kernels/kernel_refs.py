"""Float64 references and checks shared by the kernel tests (dense, slow, obviously right)."""

from __future__ import annotations

import torch


def biased(pre_BF: torch.Tensor, b_enc_F: torch.Tensor) -> torch.Tensor:
    """ReLU(pre + b_enc) as the kernels see it (the add rounded to pre's dtype), in float64."""
    return (pre_BF + b_enc_F.to(pre_BF.dtype)).double().relu()


def top_values(acts_BF: torch.Tensor, k: int) -> torch.Tensor:
    """The k largest values per row, sorted ascending."""
    return acts_BF.topk(k, dim=1).values.sort(1).values


def check_selection(vals_BK: torch.Tensor, idx_BK: torch.Tensor, acts_BF: torch.Tensor, k: int) -> None:
    """A valid top-k of `acts_BF` (float64, on any device): right shape, distinct in-range
    indices, values read at those indices, and the same multiset of values as torch.topk."""
    vals, idx, acts = vals_BK.cpu(), idx_BK.cpu(), acts_BF.cpu()
    assert vals.shape == idx.shape == (acts.shape[0], k)
    assert idx.dtype == torch.int64
    assert bool(((idx >= 0) & (idx < acts.shape[1])).all())
    assert all(len(set(row.tolist())) == k for row in idx)
    torch.testing.assert_close(vals.double(), acts.gather(1, idx), rtol=0, atol=0)
    torch.testing.assert_close(vals.double().sort(1).values, top_values(acts, k), rtol=0, atol=0)


def dense(vals_BK: torch.Tensor, idx_BK: torch.Tensor, n_out: int) -> torch.Tensor:
    """G [B, n_out] in float64 with vals[b, j] summed into column idx[b, j]."""
    rows_BK = torch.arange(idx_BK.shape[0])[:, None].expand_as(idx_BK)
    G = torch.zeros(idx_BK.shape[0], n_out, dtype=torch.float64)
    return G.index_put_((rows_BK.cpu(), idx_BK.cpu()), vals_BK.cpu().double(), accumulate=True)


def close(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-5, atol: float = 1e-5) -> None:
    """assert_close after moving to the CPU and float64 (dtypes are checked separately)."""
    torch.testing.assert_close(actual.cpu().double(), expected.cpu().double(), rtol=rtol, atol=atol)


def has_gpu() -> bool:
    """A CUDA GPU with compiled (not interpreted) Triton kernels."""
    import os

    return torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1"
