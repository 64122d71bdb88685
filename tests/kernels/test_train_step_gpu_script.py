"""The GPU benchmark runs end to end before any GPU sees it: its --smoke mode takes every code
path (step, floors, library trainer step, selection grid) on the CPU through Triton's interpreter.
A lent GPU session is short; a script that dies on a typo wastes it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_train_step_gpu_smoke_runs_every_path(tmp_path: Path) -> None:
    env = dict(os.environ, TRITON_INTERPRET="1", SAE_KERNELS="triton", OMP_NUM_THREADS="1",
               PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "train_step_gpu.py"), "--smoke", "--json",
                           "--no-sweep"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    (row,) = report["main"]
    assert row["error"] == ""
    for key in ("step_ms", "no_opt_ms", "gemm_ms", "torch_topk_ms", "select_ms", "adam_ms", "opt_ms", "lib_step_ms"):
        assert row[key] > 0, key
    (sweep,) = report["select_sweep"].values()
    assert len(sweep) == 7 and all(ms > 0 for ms in sweep.values())
