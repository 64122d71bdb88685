"""Choose the kernel backend once: Triton on CUDA tensors, the eager twins everywhere else.

`SAE_KERNELS` overrides the choice: `eager` forces the PyTorch twins, `triton` forces Triton (on a
CPU tensor this needs `TRITON_INTERPRET=1`, set before anything imports triton), `auto` (the
default) uses Triton for CUDA tensors when it imports.
"""

from __future__ import annotations

import os
from types import ModuleType

import torch

from . import eager

_CHOICES = ("auto", "eager", "triton")


def requested_backend() -> str:
    """The backend named by `SAE_KERNELS` (default `auto`), validated."""
    name = os.environ.get("SAE_KERNELS", "auto").strip().lower() or "auto"
    if name not in _CHOICES:
        raise ValueError(f"SAE_KERNELS={name!r} is not one of {', '.join(_CHOICES)}.")
    return name


def _load_triton() -> ModuleType | None:
    try:
        from . import triton_ops
    except Exception:  # a missing or broken triton, or no usable driver: fall back to eager
        return None
    return triton_ops


_TRITON: ModuleType | None = None
_TRITON_TRIED = False


def triton_module() -> ModuleType | None:
    """The Triton ops module, or None when triton is not installed or has no working driver."""
    global _TRITON, _TRITON_TRIED
    if not _TRITON_TRIED:
        _TRITON_TRIED = True
        _TRITON = _load_triton()
    return _TRITON


def ops_for(t: torch.Tensor) -> ModuleType:
    """The module whose functions should handle tensors on `t`'s device."""
    name = requested_backend()
    if name == "eager":
        return eager
    interpret = os.environ.get("TRITON_INTERPRET") == "1"
    if name == "triton":
        mod = triton_module()
        if mod is None:
            raise RuntimeError("SAE_KERNELS=triton but triton could not be imported; pip install triton.")
        if not (t.is_cuda or interpret):
            raise RuntimeError(
                "SAE_KERNELS=triton on a CPU tensor needs TRITON_INTERPRET=1 set before importing triton."
            )
        return mod
    if t.is_cuda:
        mod = triton_module()
        if mod is not None:
            return mod
    return eager


def backend_name(t: torch.Tensor) -> str:
    """`triton` or `eager`: which backend `ops_for(t)` picks."""
    return "eager" if ops_for(t) is eager else "triton"
