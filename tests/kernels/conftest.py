"""Kernel tests: Triton runs in its CPU interpreter unless a GPU run asks for compiled kernels.

TRITON_INTERPRET must be set before the process first imports triton, so it is set here, at
collection, before any test module imports `sae_kernels`. A GPU run sets TRITON_INTERPRET=0 and
selects `-m gpu`; the `device` fixture then yields "cuda" and skips "cpu".
"""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
HAS_GPU = torch.cuda.is_available() and not INTERPRET

CPU = pytest.param(
    "cpu", marks=pytest.mark.skipif(not INTERPRET, reason="Triton on CPU needs TRITON_INTERPRET=1")
)
CUDA = pytest.param(
    "cuda",
    marks=[
        pytest.mark.gpu,
        pytest.mark.skipif(not HAS_GPU, reason="needs a CUDA GPU and TRITON_INTERPRET unset or 0"),
    ],
)


@pytest.fixture(params=[CPU, CUDA])
def device(request) -> str:
    """Where the Triton kernels run: the CPU interpreter or a CUDA GPU."""
    return request.param


@pytest.fixture
def gen() -> torch.Generator:
    """A seeded CPU generator; tensors are drawn on the CPU and moved, so devices see equal data."""
    return torch.Generator().manual_seed(0)
