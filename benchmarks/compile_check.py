"""Compile every Triton kernel of `sae_kernels` for a CUDA GPU, on a machine without one.

Triton's NVIDIA backend ships its own LLVM and `ptxas`, so a kernel can be lowered to PTX and a
cubin for, say, sm_90 (H100/H200) without a driver. This script runs the public ops of
`sae_kernels.triton_ops` on CPU tensors of the benchmark shapes with every launch turned into a
compile-only warm-up against a stand-in driver, so the specialisations compiled are exactly the
ones a GPU run would launch (same constexprs, warps and argument alignment). For each it reports
registers per thread, spilled bytes (local memory), shared memory and compile time, read from the
cubin with the bundled `cuobjdump`.

It catches what the CPU interpreter cannot: code that interprets but does not compile, and
register spills. It measures no speed.

Usage: python benchmarks/compile_check.py [--arch 90] [--quick] [--json]
Exit status 1 when a kernel fails to compile or spills registers.
Must run without TRITON_INTERPRET=1 (under the interpreter `@triton.jit` builds no compilable kernel).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

CONFIGS = [(768, 32768, 32), (2304, 65536, 64), (576, 4608, 32)]
SWEEP = [(768, 2**p, 32) for p in (14, 20)] + [(768, 32768, k) for k in (16, 128, 256)]
# Rows per call: every launch parameter that depends on the batch saturates well below this.
BATCH = 256


@dataclass
class Compiled:
    """One compiled specialisation of a kernel."""

    kernel: str
    op: str
    config: str
    constexprs: str
    num_warps: int
    regs: int
    spill_bytes: int
    shared_bytes: int
    seconds: float


class _CompileOnlyDriver:
    """Stands in for the CUDA driver: names the target, never touches a device."""

    def __init__(self, arch: int) -> None:
        from triton.backends.compiler import GPUTarget

        self.target = GPUTarget("cuda", arch, 32)

    def get_current_target(self):
        return self.target

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device: int | None = None) -> int:
        return 0

    def is_active(self) -> bool:
        return True


def _jit_kernels() -> list:
    from sae_kernels import _triton_select, _triton_sparse
    from triton.runtime.jit import JITFunction

    mods = (_triton_select, _triton_sparse)
    return [v for m in mods for v in vars(m).values() if isinstance(v, JITFunction) and "_kernel" in v.__name__]


@contextlib.contextmanager
def compile_only(arch: int, record: Callable[[object, dict], None]) -> Iterator[None]:
    """Within the block every kernel launch compiles (for `arch`) and calls record(kernel, kwargs)."""
    from triton.runtime.driver import driver

    kernels = _jit_kernels()
    previous = driver._active  # None on a machine without a GPU driver: nothing to reset to
    driver.set_active(_CompileOnlyDriver(arch))

    def patched(kern):
        original = type(kern).run

        def run(*args, grid, warmup, **kwargs):
            compiled = original(kern, *args, grid=grid, warmup=True, **kwargs)
            record(compiled, kwargs)
            return compiled

        return run

    try:
        for kern in kernels:
            kern.run = patched(kern)
            kern.device_caches.clear()
        yield
    finally:
        for kern in kernels:
            del kern.run
            kern.device_caches.clear()
        driver._active = previous


def resource_usage(cubin: bytes) -> tuple[int, int, int]:
    """(registers, spilled local bytes, static+dynamic shared bytes) of the cubin's one function."""
    import triton

    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([str(tool), "--dump-resource-usage", f.name], capture_output=True, text=True,
                              check=True).stdout
    fields = dict(re.findall(r"(REG|LOCAL|SHARED):(\d+)", text))
    return int(fields["REG"]), int(fields["LOCAL"]), int(fields["SHARED"])


def op_calls(d_in: int, d_sae: int, k: int, batch: int) -> list[tuple[str, Callable[[], object]]]:
    """The kernel-backed ops of one training step, with the trainer's dtypes (a bf16 and an fp32
    encoder). Tensors are uninitialised: nothing runs, only shapes, dtypes and alignment matter."""
    from sae_kernels import _triton_select as select
    from sae_kernels import _triton_sparse as sparse
    from sae_kernels import triton_ops as ops

    def e(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return torch.empty(*shape, dtype=dtype)

    k_aux = min(2 * k, d_sae)
    idx = torch.zeros(batch, k, dtype=torch.int64)
    idx_aux = torch.zeros(batch, k + k_aux, dtype=torch.int64)
    dead = torch.zeros(d_sae, dtype=torch.bool)
    W_dec, W_enc_T, W_dec16 = e(d_sae, d_in), e(d_sae, d_in), e(d_sae, d_in, dtype=torch.bfloat16)
    calls = []
    for name, dt in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        pre = e(batch, d_sae, dtype=dt)
        calls += [
            (f"topk_select {name}", lambda pre=pre: ops.topk_select(pre, e(d_sae), k)),
            (f"topk_select+aux {name}", lambda pre=pre: ops.topk_select(pre, e(d_sae), k, dead, k_aux)),
            # BatchTopK's per-row candidate rounds (cap = 4k, then 16k when a row may hide more).
            (f"batch_topk cap {name}", lambda pre=pre: [select.row_topk(pre, c, e(d_sae), write_back=True)
                                                        for c in (min(4 * k, d_sae), min(16 * k, d_sae))]),
            (f"sparse_decode {name}", lambda dt=dt: ops.sparse_decode(e(batch, k, dtype=dt), idx, W_dec)),
            (f"sparse_encoder_grad {name}", lambda dt=dt: ops.sparse_encoder_grad(
                e(batch, d_in, dtype=dt), e(batch, k + k_aux, dtype=dt), idx_aux, d_sae)),
            # sparse_input_grad decodes through a transposed copy of W_enc; skip the copy here.
            (f"sparse_input_grad {name}", lambda dt=dt: sparse.decode(
                e(batch, k + k_aux, dtype=dt), idx_aux, W_enc_T, torch.float32)),
        ]
    calls += [
        ("sparse_decode_grad_vals fp32", lambda: ops.sparse_decode_grad_vals(e(batch, d_in), idx, W_dec)),
        # The bf16 encoder's decodes: rows gathered from a bf16 copy of W_dec, fp32 out.
        ("sparse_decode bf16 copy", lambda: ops.sparse_decode(e(batch, k, dtype=torch.bfloat16), idx,
                                                              W_dec16, torch.float32)),
        ("sparse_decode_grad_vals bf16 copy", lambda: ops.sparse_decode_grad_vals(e(batch, d_in), idx, W_dec16)),
        ("sparse_decode_grad_vals zeros inactive", lambda: ops.sparse_decode_grad_vals(
            e(batch, d_in), idx, W_dec16, e(batch, k, dtype=torch.bfloat16))),
        ("sparse_outer bf16 vals", lambda: ops.sparse_outer(idx, e(batch, k, dtype=torch.bfloat16),
                                                            e(batch, d_in), d_sae)),
        ("sparse_outer fp32", lambda: ops.sparse_outer(idx, e(batch, k), e(batch, d_in), d_sae)),
        ("remove_parallel_grad_", lambda: ops.remove_parallel_grad_(W_dec, e(d_sae, d_in))),
        ("decoder_adam_step_", lambda: ops.decoder_adam_step_(W_dec, e(d_sae, d_in), e(d_sae, d_in), e(d_sae, d_in),
                                                              torch.ones(()), 1e-4, 0.9, 0.999)),
        ("normalize_rows_", lambda: ops.normalize_rows_(W_dec)),
    ]
    return calls


def check(configs: list[tuple[int, int, int]], arch: int, batch: int = BATCH) -> tuple[list[Compiled], list[str]]:
    """Compile every op at every config; (one row per new specialisation, error lines)."""
    rows: list[Compiled] = []
    errors: list[str] = []
    seen: set[str] = set()
    current = {"op": "", "config": "", "t0": 0.0}

    def record(compiled, kwargs: dict) -> None:
        md = compiled.metadata
        key = md.hash
        if key in seen:
            return
        seen.add(key)
        regs, spill, shared = resource_usage(compiled.asm["cubin"])
        consts = ",".join(f"{k}={v}" for k, v in kwargs.items() if k.isupper())
        rows.append(Compiled(md.name, current["op"], current["config"], consts, md.num_warps, regs, spill,
                             max(shared, md.shared), time.perf_counter() - current["t0"]))
        current["t0"] = time.perf_counter()

    with compile_only(arch, record), torch.no_grad():
        for d_in, d_sae, k in configs:
            current["config"] = f"{d_in}/{d_sae}/{k}"
            for op, call in op_calls(d_in, d_sae, k, batch):
                current["op"], current["t0"] = op, time.perf_counter()
                try:
                    call()
                except Exception as exc:  # report every failing op, not just the first
                    errors.append(f"{current['config']} {op}: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
    return rows, errors


def print_table(rows: list[Compiled], errors: list[str], arch: int) -> None:
    print(f"### Triton kernels compiled for sm_{arch} (no GPU needed)\n")
    print("| kernel | first op | config d_in/d_sae/k | constexprs | warps | regs | spill B | smem B | compile s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r.kernel} | {r.op} | {r.config} | {r.constexprs} | {r.num_warps} | {r.regs} "
              f"| {r.spill_bytes} | {r.shared_bytes} | {r.seconds:.1f} |")
    spills = [r for r in rows if r.spill_bytes]
    print(f"\n{len(rows)} specialisations, {len(spills)} spilling, {len(errors)} errors")
    for line in errors:
        print("ERROR", line)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability x10: 80 A100, 90 H100/H200")
    parser.add_argument("--quick", action="store_true", help="only the first main config")
    parser.add_argument("--json", action="store_true", help="also print one JSON line with every row")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("compile_check.py compiles real kernels: unset TRITON_INTERPRET.", file=sys.stderr)
        return 2
    configs = CONFIGS[:1] if args.quick else CONFIGS + SWEEP
    rows, errors = check(configs, args.arch)
    print_table(rows, errors, args.arch)
    if args.json:
        print(json.dumps({"arch": args.arch, "rows": [asdict(r) for r in rows], "errors": errors}))
    return 1 if errors or any(r.spill_bytes for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
