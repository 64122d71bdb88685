"""A TopK training step on a GPU never synchronises with the host.

A sync in the middle of a step (bincount sizing its output, boolean-mask indexing, `.item()`)
makes the CPU wait for the GPU and then leaves the GPU idle while Python queues the rest of the
step: at d_sae 32k a step is about a millisecond, the same order as its launch overhead. This
runs three steps of the toolkit's own trainer (bf16 encoder, AuxK on, firing bookkeeping) under
`torch.cuda.set_sync_debug_mode("error")`. BatchTopK reads its per-row maximum count back once
per step by design and is not checked here.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from kernel_refs import has_gpu

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not has_gpu(), reason="needs a CUDA GPU, TRITON_INTERPRET unset")]


def _bare_trainer():
    spec = importlib.util.spec_from_file_location(
        "train_step_bench", Path(__file__).resolve().parents[2] / "benchmarks" / "train_step.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.bare_trainer


def test_topk_step_never_syncs():
    pytest.importorskip("sae.train.trainer")
    from sae.config import SAEConfig

    cfg = SAEConfig(d_in=256, d_sae=8192, k=32, activation="topk", hook_name="h")
    trainer, member = _bare_trainer()(cfg, 1024, dead_tokens=10**12, device="cuda", encoder_dtype="bfloat16")
    member.since_fired_F[:819] = 10**13  # a tenth dead: the AuxK selection and loss run
    x_BD = torch.randn(1024, 256, device="cuda")
    trainer._step_member(member, x_BD)  # compiles the kernels
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            trainer._step_member(member, x_BD)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()
    assert torch.isfinite(member.last.total)
