"""Behaviour analysis with SAEs: contrastive data, a behaviour metric on the model, latent
ranking with probe baselines, causal checks (steering, ablation, removal) and labels.

See docs/behaviour.md; the pipeline is `run_behaviour` in `report.py`. Names load lazily, so
importing `cli_snippet` (for `sae --help`) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "BehaviourDataset": "datasets", "BehaviourItem": "datasets", "load_behaviour": "datasets",
    "read_jsonl": "datasets", "write_jsonl": "datasets",
    "BehaviourConfig": "report", "BehaviourReport": "report", "run_behaviour": "report",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
