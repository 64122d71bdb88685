"""Sparse autoencoders on transformer activations: harvest, train, evaluate, analyse, visualise.

The pipeline, one module each: `sae.lm` (load a model) -> `sae.activations` (token blocks,
harvest, on-disk cache) -> `sae.model` / `sae.train` (SAEs and their trainer) -> `sae.evals` ->
`sae.analysis` -> `sae.dashboard`.

Shape suffixes used across the code base: B batch (rows), T position, N blocks, D d_in,
F d_sae (latents), K selected latents per row, V vocabulary.

Top-level names are imported lazily so that `sae --help` does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "SparseAutoencoder": "sae.model",
    "SAEConfig": "sae.config",
    "load_model": "sae.lm",
    "open_cache": "sae.activations",
    "build_cache": "sae.activations",
    "load": "sae.formats",
    "save": "sae.formats",
    "train": "sae.train",
}

__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'sae' has no attribute {name!r}")
