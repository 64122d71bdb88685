"""Every Triton kernel compiles for a Hopper GPU (sm_90) without spilling, checked on the CPU.

The interpreter runs kernel code as NumPy, so it cannot see code that does not lower to PTX, nor
register spills. `benchmarks/compile_check.py` compiles each specialisation a training step
launches with Triton's own LLVM and ptxas against a stand-in driver; this test runs its quick
mode in a fresh process (TRITON_INTERPRET unset, an empty kernel cache).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
KERNELS = {"_select_kernel", "_decode_kernel", "_grad_vals_kernel", "_segment_outer_kernel",
           "_remove_parallel_kernel", "_normalize_kernel", "_decoder_adam_kernel"}


def test_every_kernel_compiles_for_sm90_without_spills(tmp_path: Path) -> None:
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "SAE_KERNELS")}
    env |= {"TRITON_CACHE_DIR": str(tmp_path), "OMP_NUM_THREADS": "1", "TRITON_DEFAULT_FP_FUSION": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "compile_check.py"), "--quick", "--json"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["errors"] == []
    rows = report["rows"]
    assert {r["kernel"] for r in rows} == KERNELS
    assert [r for r in rows if r["spill_bytes"]] == []
    # The main selection (bf16 pre-activations, no AuxK) must leave room for several programs
    # per SM: 65536 registers / (regs * threads).
    main = next(r for r in rows if r["op"] == "topk_select bf16" and "FROM_CANDIDATES=False" in r["constexprs"])
    assert 65536 // (main["regs"] * 32 * main["num_warps"]) >= 2, main
    assert proc.returncode == 0
