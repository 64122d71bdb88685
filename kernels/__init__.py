"""Sparse SAE kernels (imported as `sae_kernels`): Triton on CUDA, eager PyTorch twins elsewhere.

This package knows nothing of `sae`; the model reaches it through the functions below.
"""

from .autograd import SparseCode, sparse_decode, topk_encode
from .dispatch import backend_name, ops_for
from .optim import UnitRowAdam


def remove_parallel_grad_(W_dec_FD, grad_FD) -> None:
    """Remove from each decoder row's gradient its component along the (unit-norm) row."""
    ops_for(W_dec_FD).remove_parallel_grad_(W_dec_FD, grad_FD)


def normalize_rows_(W_dec_FD) -> None:
    """Scale each decoder row to unit L2 norm, in place."""
    ops_for(W_dec_FD).normalize_rows_(W_dec_FD)


__all__ = [
    "SparseCode",
    "UnitRowAdam",
    "backend_name",
    "normalize_rows_",
    "ops_for",
    "remove_parallel_grad_",
    "sparse_decode",
    "topk_encode",
]
