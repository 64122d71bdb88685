"""benchmarks/harvest_gpu.py runs end to end before a GPU sees it: --smoke takes every path
(random GPT-2 small booted through the bridge, TransformerLens, plain HF, our fast path) on the CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_harvest_gpu_smoke_runs_every_path(tmp_path: Path) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "harvest_gpu.py"), "--smoke", "--json"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["fast_equals_bridge_bf16"] is True
    assert report["tokens"] == 64
    assert len(report["rows"]) == 4 and all(r["ms"] > 0 for r in report["rows"])
