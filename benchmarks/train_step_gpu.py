"""Time a full TopK SAE training step on one CUDA GPU, with the same-run floors it is judged by.

A step (batch 4096 by default):
1. encode: topk_encode(x bf16, W_enc fp32 master cast to bf16 for the GEMM, b_enc, k, b_dec) (x - b_dec
   formed inside, so b_dec's gradient is one GEMV);
2. decode: sparse_decode(vals, idx, W_dec, b_dec), rows read from a bf16 copy of W_dec made once
   per step -> fp32 reconstruction; MSE loss;
3. backward (sparse: no dense [B, d_sae] gradient);
4. UnitRowAdam: fused torch Adam for the encoder and biases; for the decoder one pass that
   removes the gradient's component along each unit-norm row, steps Adam and renormalises.
Floors from the same run: the bf16 encoder GEMM alone, torch.topk on the [B, d_sae] bf16
pre-activations, our fused select alone, torch's fused Adam over the same weights (the floor) and
our optimizer step alone; and the toolkit's own trainer
step (`sae.train`, encoder_dtype bfloat16, AuxK on 10% dead latents) for comparison. Then the
selection's chunk length / warps grid, and sweeps over d_sae (2^14..2^20, k=32, d_in=768) and
over k (16..256, d_sae=32768).

Useful FLOPs per step: 2*B*d_in*d_sae (encoder GEMM) + 8*B*k*d_in (decode, value grad,
decoder-weight grad, encoder-weight grad).

Usage: python benchmarks/train_step_gpu.py [--json] [--quick] [--no-sweep] [--batch 4096]
Prints a markdown table; with --json also one JSON object with every row. A failing config
prints an error row and the run goes on.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

MAIN_CONFIGS = [(768, 32768, 32), (2304, 65536, 64)]
# Issue targets for the two main configs on an H100/H200: ms per step.
STEP_TARGET_MS = {(768, 32768, 32): 1.3, (2304, 65536, 64): 6.0}
SWEEP_D_SAE = [2**p for p in range(14, 21)]
SWEEP_K = [16, 32, 64, 128, 256]
# Where everything runs: "cuda", or "cpu" for --smoke (Triton's interpreter, tiny shapes), which
# checks this script's code paths on a machine without a GPU.
DEV = "cuda"
SMOKE_CONFIGS = [(24, 300, 4)]


@dataclass
class Row:
    """One benchmarked configuration; times in ms, memory in GiB."""

    d_in: int
    d_sae: int
    k: int
    batch: int
    step_ms: float = float("nan")
    no_opt_ms: float = float("nan")
    gemm_ms: float = float("nan")
    torch_topk_ms: float = float("nan")
    select_ms: float = float("nan")
    adam_ms: float = float("nan")
    opt_ms: float = float("nan")
    peak_gib: float = float("nan")
    lib_step_ms: float = float("nan")
    tokens_per_s: float = float("nan")
    tflops: float = float("nan")
    error: str = ""

    @property
    def step_over_gemm(self) -> float:
        return self.no_opt_ms / self.gemm_ms

    @property
    def select_over_topk(self) -> float:
        return self.select_ms / self.torch_topk_ms


def cuda_time_ms(fn: Callable[[], object], iters: int, warmup: int) -> float:
    """Median over `iters` of CUDA-event time of fn(), after `warmup` untimed calls (wall time
    on the CPU in --smoke, without warm-up)."""
    for _ in range(warmup if DEV == "cuda" else 0):
        fn()
    if DEV != "cuda":
        times = []
        for _ in range(iters):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def _reset_memory() -> None:
    if DEV == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak_gib() -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if DEV == "cuda" else float("nan")


class Trainer:
    """Parameters, fused Adam and the step of a TopK SAE on the GPU (fp32 master weights)."""

    def __init__(self, d_in: int, d_sae: int, k: int, batch: int) -> None:
        dev = DEV
        gen = torch.Generator(device=dev).manual_seed(0)
        self.k = k
        self.x_BD = torch.randn(batch, d_in, device=dev, generator=gen).bfloat16()
        W_dec = torch.randn(d_sae, d_in, device=dev, generator=gen)
        W_dec /= W_dec.norm(dim=1, keepdim=True)
        self.W_enc = W_dec.t().contiguous().requires_grad_()
        self.b_enc = torch.zeros(d_sae, device=dev, requires_grad=True)
        self.W_dec = W_dec.requires_grad_()
        self.b_dec = torch.zeros(d_in, device=dev, requires_grad=True)
        import sae_kernels

        self.params = [self.W_enc, self.b_enc, self.W_dec, self.b_dec]
        # Adam with the decoder's projection and renormalisation fused in, as the trainer uses.
        self.opt = sae_kernels.UnitRowAdam(self.params, unit_rows=self.W_dec, lr=1e-4, fused=dev == "cuda")

    def forward_backward(self) -> None:
        import sae_kernels

        x = self.x_BD
        code = sae_kernels.topk_encode(x, self.W_enc, self.b_enc, self.k, b_dec_D=self.b_dec)
        W_gather = self.W_dec.detach().bfloat16()  # as the trainer does under a bf16 encoder
        recon = sae_kernels.sparse_decode(code.vals_BK, code.idx_BK, self.W_dec, self.b_dec, W_gather)
        loss = (recon - x.float()).pow(2).sum(-1).mean()
        loss.backward()

    def step(self) -> None:
        self.forward_backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    def zero_grad(self) -> None:
        self.opt.zero_grad(set_to_none=True)


def measure(d_in: int, d_sae: int, k: int, batch: int, iters: int) -> Row:
    """All timings of one configuration; never raises (the error goes in the row)."""
    row = Row(d_in, d_sae, k, batch)
    try:
        _fill(row, iters)
    except Exception as exc:  # one failing config must not abort the table
        row.error = f"{type(exc).__name__}: {exc}".splitlines()[0][:160]
        traceback.print_exc(file=sys.stderr)
    _reset_memory()
    return row


def _fill(row: Row, iters: int) -> None:
    from sae_kernels import triton_ops

    _reset_memory()
    trainer = Trainer(row.d_in, row.d_sae, row.k, row.batch)
    row.step_ms = cuda_time_ms(trainer.step, iters, warmup=3)
    row.peak_gib = _peak_gib()

    def no_opt() -> None:
        trainer.forward_backward()
        trainer.zero_grad()

    row.no_opt_ms = cuda_time_ms(no_opt, iters, warmup=1)
    trainer.forward_backward()  # leave gradients for the optimizer timings
    row.opt_ms = cuda_time_ms(trainer.opt.step, iters, warmup=1)
    floor = torch.optim.Adam(trainer.params, lr=1e-4, fused=DEV == "cuda")  # plain fused Adam, own state
    row.adam_ms = cuda_time_ms(floor.step, iters, warmup=1)
    del floor
    trainer.zero_grad()

    x_bf16 = trainer.x_BD
    W_bf16 = trainer.W_enc.detach().bfloat16()
    row.gemm_ms = cuda_time_ms(lambda: x_bf16 @ W_bf16, iters, warmup=2)
    pre_BF = x_bf16 @ W_bf16
    b_enc = trainer.b_enc.detach()
    row.torch_topk_ms = cuda_time_ms(lambda: pre_BF.topk(row.k, dim=-1, sorted=False), iters, warmup=2)
    row.select_ms = cuda_time_ms(lambda: triton_ops.topk_select(pre_BF, b_enc, row.k), iters, warmup=2)

    flops = 2 * row.batch * row.d_in * row.d_sae + 8 * row.batch * row.k * row.d_in
    row.lib_step_ms = library_step_ms(row, iters)
    row.tokens_per_s = row.batch / (row.step_ms * 1e-3)
    row.tflops = flops / (row.step_ms * 1e-3) / 1e12


def library_step_ms(row: Row, iters: int) -> float:
    """ms per step of the toolkit's own trainer step (`Trainer._step_member`, encoder_dtype
    bfloat16, AuxK with 10% dead latents, firing bookkeeping); NaN when `sae` is not importable."""
    try:
        from train_step import bare_trainer

        from sae.config import SAEConfig
    except ImportError as exc:
        print(f"library step skipped: {exc}", file=sys.stderr)
        return float("nan")
    cfg = SAEConfig(d_in=row.d_in, d_sae=row.d_sae, k=row.k, activation="topk", hook_name="h")
    trainer, member = bare_trainer(cfg, row.batch, dead_tokens=10**12, device=DEV, encoder_dtype="bfloat16")
    member.since_fired_F[: row.d_sae // 10] = 10**13
    x_BD = torch.randn(row.batch, row.d_in, device=DEV)
    return cuda_time_ms(lambda: trainer._step_member(member, x_BD), iters, warmup=3)


SELECT_GRID = [(2048, 4), (4096, 4), (4096, 8), (8192, 8), (8192, 16), (16384, 32)]


def select_sweep(d_in: int, d_sae: int, k: int, batch: int, iters: int) -> dict[str, float]:
    """ms of the fused selection for each (chunk length, warps), next to torch.topk on the same
    bf16 pre-activations: the data to set BASE_BLOCK and _num_warps in _triton_select.py."""
    from sae_kernels import _triton_select as select

    gen = torch.Generator(device=DEV).manual_seed(0)
    pre_BF = (torch.randn(batch, d_in, device=DEV, generator=gen).bfloat16()
              @ torch.randn(d_in, d_sae, device=DEV, generator=gen).bfloat16())
    b_enc = torch.zeros(d_sae, device=DEV)
    out = {"torch.topk": cuda_time_ms(lambda: pre_BF.topk(k, dim=-1, sorted=False), iters, 2)}
    for block, warps in SELECT_GRID:
        fn = lambda: select.row_topk(pre_BF, k, b_enc, base_block=block, num_warps=warps)  # noqa: B023
        out[f"{block}/{warps}w"] = cuda_time_ms(fn, iters, 2)
    return out


def print_select_sweep(configs: list[tuple[int, int, int]], iters: int, batch: int) -> dict[str, dict[str, float]]:
    print("\n### Selection: chunk length / warps (ms; default marked *)\n")
    names = ["torch.topk"] + [f"{b}/{w}w" for b, w in SELECT_GRID]
    print("| d_in/d_sae/k | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    from sae_kernels import _triton_select as select

    default = f"{select.BASE_BLOCK}/{select._num_warps(select.BASE_BLOCK)}w"
    results = {}
    for d_in, d_sae, k in configs:
        key = f"{d_in}/{d_sae}/{k}"
        try:
            res = select_sweep(d_in, d_sae, k, batch, iters)
        except Exception as exc:  # keep the rest of the report
            print(f"| {key} | error: {type(exc).__name__}: {str(exc).splitlines()[0][:120]} |", flush=True)
            continue
        results[key] = res
        cells = [f"{res[n]:.3f}{'*' if n == default else ''}" for n in names]
        print(f"| {key} | " + " | ".join(cells) + " |", flush=True)
    return results


HEADER = (
    "| d_in | d_sae | k | step ms | target | fwd+bwd ms | bf16 GEMM ms | (fwd+bwd)/GEMM "
    "| torch.topk ms | select ms | select/topk | Adam ms | our opt ms | peak GiB | library step ms | tokens/s "
    "| TFLOP/s |"
)


def markdown_row(row: Row) -> str:
    """One table line; an error row names the exception instead of the numbers."""
    head = f"| {row.d_in} | {row.d_sae} | {row.k} |"
    if row.error:
        return head + f" error: {row.error} |" + " |" * 13
    target = STEP_TARGET_MS.get((row.d_in, row.d_sae, row.k))
    verdict = "-" if target is None else f"{target} {'ok' if row.step_ms <= target else 'MISS'}"
    return head + (
        f" {row.step_ms:.3f} | {verdict} | {row.no_opt_ms:.3f} | {row.gemm_ms:.3f} "
        f"| {row.step_over_gemm:.2f} | {row.torch_topk_ms:.3f} | {row.select_ms:.3f} "
        f"| {row.select_over_topk:.2f} | {row.adam_ms:.3f} | {row.opt_ms:.3f} | {row.peak_gib:.2f} "
        f"| {row.lib_step_ms:.3f} "
        f"| {row.tokens_per_s:,.0f} | {row.tflops:.1f} |"
    )


def print_table(title: str, rows: list[Row]) -> None:
    print(f"\n### {title}\n")
    print(HEADER)
    print("|" + "---|" * 17)
    for row in rows:
        print(markdown_row(row), flush=True)


def main(argv: list[str] | None = None) -> int:
    global DEV
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="also print all rows as one JSON object")
    parser.add_argument("--quick", action="store_true", help="fewer timed iterations")
    parser.add_argument("--no-sweep", action="store_true", help="only the two main configs")
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--smoke", action="store_true",
                        help="no GPU: run every code path on the CPU at tiny shapes (needs TRITON_INTERPRET=1)")
    args = parser.parse_args(argv)
    configs, d_saes, ks, iters = MAIN_CONFIGS, SWEEP_D_SAE, SWEEP_K, 5 if args.quick else 20
    if args.smoke:
        if os.environ.get("TRITON_INTERPRET") != "1" or os.environ.get("SAE_KERNELS") != "triton":
            print("--smoke needs TRITON_INTERPRET=1 and SAE_KERNELS=triton in the environment.", file=sys.stderr)
            return 2
        DEV, configs, d_saes, ks, iters, args.batch = "cpu", SMOKE_CONFIGS, [520], [8], 1, 64
    elif not torch.cuda.is_available():
        print("train_step_gpu.py needs a CUDA GPU; none is visible (--smoke checks it on the CPU).", file=sys.stderr)
        return 2
    device = torch.cuda.get_device_name() if DEV == "cuda" else "cpu (smoke: Triton interpreter)"
    print(f"device: {device}  torch {torch.__version__}  batch {args.batch}")
    tables = {"main": [measure(d, f, k, args.batch, iters) for d, f, k in configs]}
    print_table("Main configs", tables["main"])
    sweeps = print_select_sweep(configs, iters, args.batch)
    if not args.no_sweep:
        d_in, d_sae, k = configs[0]
        tables["d_sae sweep"] = [measure(d_in, f, k, args.batch, iters) for f in d_saes]
        print_table(f"d_sae sweep (d_in {d_in}, k {k})", tables["d_sae sweep"])
        tables["k sweep"] = [measure(d_in, d_sae, kk, args.batch, iters) for kk in ks]
        print_table(f"k sweep (d_in {d_in}, d_sae {d_sae})", tables["k sweep"])
    if args.json:
        payload = {"device": device, "torch": torch.__version__}
        payload |= {name: [asdict(r) for r in rows] for name, rows in tables.items()}
        payload["select_sweep"] = sweeps
        print(json.dumps(payload))
    failed = any(r.error for rows in tables.values() for r in rows) or len(sweeps) < len(configs)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
