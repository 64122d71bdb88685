"""Time a full TopK SAE training step on one CUDA GPU, with the same-run floors it is judged by.

A step (batch 4096 by default):
1. encode: topk_encode((x - b_dec) in bf16, W_enc fp32 master cast to bf16 for the GEMM, b_enc, k);
2. decode: sparse_decode(vals, idx, W_dec, b_dec) -> fp32 reconstruction; MSE loss;
3. backward (sparse: no dense [B, d_sae] gradient);
4. remove the decoder gradient's component along each unit-norm row; fused torch Adam step;
   renormalise the decoder rows.
Floors from the same run: the bf16 encoder GEMM alone, torch.topk on the [B, d_sae] bf16
pre-activations, our fused select alone, the fused Adam step alone. Then a sweep over d_sae
(2^14..2^20, k=32, d_in=768) and over k (16..256, d_sae=32768).

Useful FLOPs per step: 2*B*d_in*d_sae (encoder GEMM) + 8*B*k*d_in (decode, value grad,
decoder-weight grad, encoder-weight grad).

Usage: python benchmarks/train_step_gpu.py [--json] [--quick] [--no-sweep] [--batch 4096]
Prints a markdown table; with --json also one JSON object with every row. A failing config
prints an error row and the run goes on.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

MAIN_CONFIGS = [(768, 32768, 32), (2304, 65536, 64)]
# Issue targets for the two main configs on an H100/H200: ms per step.
STEP_TARGET_MS = {(768, 32768, 32): 1.3, (2304, 65536, 64): 6.0}
SWEEP_D_SAE = [2**p for p in range(14, 21)]
SWEEP_K = [16, 32, 64, 128, 256]


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
    peak_gib: float = float("nan")
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
    """Median over `iters` of CUDA-event time of fn(), after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
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


class Trainer:
    """Parameters, fused Adam and the step of a TopK SAE on the GPU (fp32 master weights)."""

    def __init__(self, d_in: int, d_sae: int, k: int, batch: int, dev: str = "cuda") -> None:
        gen = torch.Generator(device=dev).manual_seed(0)
        self.k = k
        self.x_BD = torch.randn(batch, d_in, device=dev, generator=gen).bfloat16()
        W_dec = torch.randn(d_sae, d_in, device=dev, generator=gen)
        W_dec /= W_dec.norm(dim=1, keepdim=True)
        self.W_enc = W_dec.t().contiguous().requires_grad_()
        self.b_enc = torch.zeros(d_sae, device=dev, requires_grad=True)
        self.W_dec = W_dec.requires_grad_()
        self.b_dec = torch.zeros(d_in, device=dev, requires_grad=True)
        params = [self.W_enc, self.b_enc, self.W_dec, self.b_dec]
        self.opt = torch.optim.Adam(params, lr=1e-4, fused=dev == "cuda")

    def forward_backward(self) -> None:
        import sae_kernels

        x = self.x_BD
        code = sae_kernels.topk_encode((x - self.b_dec).bfloat16(), self.W_enc, self.b_enc, self.k)
        recon = sae_kernels.sparse_decode(code.vals_BK, code.idx_BK, self.W_dec, self.b_dec)
        loss = (recon - x.float()).pow(2).sum(-1).mean()
        loss.backward()

    def step(self) -> None:
        import sae_kernels

        self.forward_backward()
        sae_kernels.remove_parallel_grad_(self.W_dec.detach(), self.W_dec.grad)
        self.opt.step()
        with torch.no_grad():
            sae_kernels.normalize_rows_(self.W_dec)
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
    torch.cuda.empty_cache()
    return row


def _fill(row: Row, iters: int) -> None:
    from sae_kernels import triton_ops

    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    trainer = Trainer(row.d_in, row.d_sae, row.k, row.batch)
    row.step_ms = cuda_time_ms(trainer.step, iters, warmup=3)
    row.peak_gib = torch.cuda.max_memory_allocated() / 2**30

    def no_opt() -> None:
        trainer.forward_backward()
        trainer.zero_grad()

    row.no_opt_ms = cuda_time_ms(no_opt, iters, warmup=1)
    trainer.forward_backward()  # leave gradients for the Adam floor
    row.adam_ms = cuda_time_ms(trainer.opt.step, iters, warmup=1)
    trainer.zero_grad()

    x_bf16 = trainer.x_BD
    W_bf16 = trainer.W_enc.detach().bfloat16()
    row.gemm_ms = cuda_time_ms(lambda: x_bf16 @ W_bf16, iters, warmup=2)
    pre_BF = x_bf16 @ W_bf16
    b_enc = trainer.b_enc.detach()
    row.torch_topk_ms = cuda_time_ms(lambda: pre_BF.topk(row.k, dim=-1, sorted=False), iters, warmup=2)
    row.select_ms = cuda_time_ms(lambda: triton_ops.topk_select(pre_BF, b_enc, row.k), iters, warmup=2)

    flops = 2 * row.batch * row.d_in * row.d_sae + 8 * row.batch * row.k * row.d_in
    row.tokens_per_s = row.batch / (row.step_ms * 1e-3)
    row.tflops = flops / (row.step_ms * 1e-3) / 1e12


HEADER = (
    "| d_in | d_sae | k | step ms | target | fwd+bwd ms | bf16 GEMM ms | (fwd+bwd)/GEMM "
    "| torch.topk ms | select ms | select/topk | Adam ms | peak GiB | tokens/s | TFLOP/s |"
)


def markdown_row(row: Row) -> str:
    """One table line; an error row names the exception instead of the numbers."""
    head = f"| {row.d_in} | {row.d_sae} | {row.k} |"
    if row.error:
        return head + f" error: {row.error} |" + " |" * 11
    target = STEP_TARGET_MS.get((row.d_in, row.d_sae, row.k))
    verdict = "-" if target is None else f"{target} {'ok' if row.step_ms <= target else 'MISS'}"
    return head + (
        f" {row.step_ms:.3f} | {verdict} | {row.no_opt_ms:.3f} | {row.gemm_ms:.3f} "
        f"| {row.step_over_gemm:.2f} | {row.torch_topk_ms:.3f} | {row.select_ms:.3f} "
        f"| {row.select_over_topk:.2f} | {row.adam_ms:.3f} | {row.peak_gib:.2f} "
        f"| {row.tokens_per_s:,.0f} | {row.tflops:.1f} |"
    )


def print_table(title: str, rows: list[Row]) -> None:
    print(f"\n### {title}\n")
    print(HEADER)
    print("|" + "---|" * 15)
    for row in rows:
        print(markdown_row(row), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="also print all rows as one JSON object")
    parser.add_argument("--quick", action="store_true", help="fewer timed iterations")
    parser.add_argument("--no-sweep", action="store_true", help="only the two main configs")
    parser.add_argument("--batch", type=int, default=4096)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("train_step_gpu.py needs a CUDA GPU; none is visible.", file=sys.stderr)
        return 2
    iters = 5 if args.quick else 20
    print(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}  batch {args.batch}")
    tables = {"main": [measure(d, f, k, args.batch, iters) for d, f, k in MAIN_CONFIGS]}
    print_table("Main configs", tables["main"])
    if not args.no_sweep:
        tables["d_sae sweep"] = [measure(768, f, 32, args.batch, iters) for f in SWEEP_D_SAE]
        print_table("d_sae sweep (d_in 768, k 32)", tables["d_sae sweep"])
        tables["k sweep"] = [measure(768, 32768, k, args.batch, iters) for k in SWEEP_K]
        print_table("k sweep (d_in 768, d_sae 32768)", tables["k sweep"])
    if args.json:
        payload = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
        payload |= {name: [asdict(r) for r in rows] for name, rows in tables.items()}
        print(json.dumps(payload))
    return 1 if any(r.error for rows in tables.values() for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
