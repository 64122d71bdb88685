"""Row-wise and batch-wide top-k selection in Triton, fused with the encoder bias and ReLU.

Per program (ROWS rows, one chunk of BLOCK latents each) the kernel:
1. loads the chunk once, adds the bias rounded to the pre-activation dtype (as the eager twin's
   in-place add does), applies ReLU, and maps each value to an int32 key ordered like the value:
   the bit pattern of a non-negative float; -1 marks latents outside the AuxK pool (not dead),
   -2 lanes past the row end and padding;
2. finds a threshold T with count(key > T) <= k <= count(key >= T) by a 4-way search on the
   integer keys: three probes per round, counted in one block reduction (about 5 rounds on real
   pre-activations, where a bisection took 12-14), stopping as soon as a probe has exactly k keys
   at or above it;
3. compacts: one prefix sum over (key > T) + ((key == T) << 16) gives every selected lane its
   output slot, ties at T filling the slots left after the keys above T;
4. repeats 2-3 on the same registers for AuxK (the k_aux largest among dead latents).
A row longer than one chunk is reduced as a tournament: every chunk writes its k candidates and
the same kernel, reading (value, index) pairs packed in one int64, reduces them until one chunk
remains. The [B, F] pre-activations are read once; later rounds read n_chunks * k pairs per row.

BatchTopK (Bussmann et al. 2024, the B*k largest over the batch) takes each row's top-`cap`
candidates with the row kernel, picks the global threshold among them and checks it is exact:
every row whose smallest candidate is above the threshold may hide more, so `cap` grows 4x and
the selection repeats (rare; a row holding all F latents is always exact).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from . import eager

# The compaction packs two counts into one int32 prefix sum: 16 bits each, so at most 2^14 lanes
# keeps (count << 16) below 2^31.
MAX_BLOCK = 16384
# Chunk length on a GPU, and keys per program when short rows share one. At 16 keys per thread
# (see _num_warps) a 4096-key program compiles to 73 registers per thread for sm_90, so three
# programs fit an SM's register file; 8192 keys need 145 (one program). Not yet timed on a GPU:
# benchmarks/train_step_gpu.py sweeps the chunk length and warps to settle it.
BASE_BLOCK = 4096
TILE = 4096


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


@triton.jit
def _round_like(x, dtype: tl.constexpr):
    """fp32 `x` rounded to `dtype` (nearest even) and returned as fp32. bf16 rounds by integer
    arithmetic because the interpreter truncates float -> bf16 casts (the GPU rounds)."""
    if dtype == tl.bfloat16:
        bits = x.to(tl.int32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & -65536
        return bits.to(tl.float32, bitcast=True)
    elif dtype == tl.float32:
        return x
    else:
        return x.to(dtype).to(tl.float32)


@triton.jit
def _scaled_key(top, frac):
    """The key of frac * (the value whose key is `top`), per row (top >= 0)."""
    return (top.to(tl.float32, bitcast=True) * frac).to(tl.int32, bitcast=True)


@triton.jit
def _threshold(keys, k):
    """Per row of `keys` [R, BLOCK]: an integer T with count(> T) <= k <= count(>= T).

    A 4-way search: each round counts the keys at or above three probes in ONE block reduction
    (three 16-bit counts packed in an int64; BLOCK <= 2^14), so a round narrows [lo, hi) to a
    quarter for the price of a bisection step. The first round probes 1/16, 1/4 and 1/2 of the
    row maximum, where the k-th largest of activation-like data lies. Invariant: count(>= lo) >= k
    > count(>= hi); a probe with exactly k keys at or above it ends the row. About 5 rounds on
    real pre-activations (a plain bisection needed 12-14).
    """
    top = tl.maximum(tl.max(keys, 1), 0)
    hi = top + 1
    lo = top * 0 - 2
    m1 = tl.minimum(tl.maximum(_scaled_key(top, 0.0625), lo + 1), hi - 1)
    m2 = tl.minimum(tl.maximum(_scaled_key(top, 0.25), lo + 1), hi - 1)
    m3 = tl.minimum(tl.maximum(_scaled_key(top, 0.5), lo + 1), hi - 1)
    # Finished rows (hi - lo <= 1) get probes lo or hi, whose counts leave them unchanged.
    while tl.max(hi - lo, 0) > 1:
        packed = ((keys >= m1[:, None]).to(tl.int64) + ((keys >= m2[:, None]).to(tl.int64) << 16)
                  + ((keys >= m3[:, None]).to(tl.int64) << 32))
        counts = tl.sum(packed, 1)
        c1 = (counts & 0xFFFF).to(tl.int32)
        c2 = ((counts >> 16) & 0xFFFF).to(tl.int32)
        c3 = (counts >> 32).to(tl.int32)
        # New lo: the highest probe with at least k keys at or above it; new hi: the lowest with fewer.
        new_lo = tl.where(c3 >= k, m3, tl.where(c2 >= k, m2, tl.where(c1 >= k, m1, lo)))
        c_lo = tl.where(c3 >= k, c3, tl.where(c2 >= k, c2, tl.where(c1 >= k, c1, k + 1)))
        new_hi = tl.where(c1 < k, m1, tl.where(c2 < k, m2, tl.where(c3 < k, m3, hi)))
        lo = tl.maximum(lo, new_lo)
        hi = tl.where(c_lo == k, lo + 1, tl.minimum(hi, new_hi))
        quarter = tl.maximum((hi - lo) // 4, 1)
        m1 = lo + quarter
        m2 = lo + (hi - lo) // 2
        m3 = hi - quarter
    return lo


@triton.jit
def _pack(vals, idx):
    """(fp32 value, int32 index) -> one int64: value bits high, index low (one store, one load)."""
    return (vals.to(tl.int32, bitcast=True).to(tl.int64) << 32) | (idx.to(tl.int64) & 0xFFFFFFFF)


@triton.jit
def _unpack(packed):
    return (packed >> 32).to(tl.int32).to(tl.float32, bitcast=True), packed.to(tl.int32)


@triton.jit
def _select_store(keys, idx, k, out_off, row_ok, out_ptr, FINAL: tl.constexpr):
    """Write each row's k lanes with the largest keys (ties at the threshold in lane order),
    packed (value, index), to the k slots at out_off[row].

    A non-negative key is the bit pattern of its ReLU'd value, so values are not kept alongside.
    Writing values and indices as one int64 per lane needs a third fewer registers than two
    stores (the per-lane addresses dominate), which lets more programs share an SM.
    Candidates (not FINAL) keep padding visible as value -1 so the next round ranks it last; the
    final output turns every non-selected-latent value into 0 and padding indices into 0.
    """
    thresh = _threshold(keys, k)[:, None]
    above = keys > thresh
    tie = keys == thresh
    ranks = tl.cumsum(above.to(tl.int32) + (tie.to(tl.int32) << 16), 1)
    n_above = tl.sum(above.to(tl.int32), 1)[:, None]
    slot = tl.where(above, (ranks & 0xFFFF) - 1, n_above + (ranks >> 16) - 1)
    take = (above | (tie & (slot < k))) & row_ok[:, None]
    vals = keys.to(tl.float32, bitcast=True)
    if FINAL:
        out = tl.where(keys >= 0, vals, 0.0)
    else:
        out = tl.where(keys >= 0, vals, tl.where(keys == -1, 0.0, -1.0))
    out_idx = tl.where(keys == -2, 0, idx)
    dst = out_off[:, None] + slot  # offsets first: adding them to a pointer tensor costs registers
    tl.store(out_ptr + dst, _pack(out, out_idx), mask=take)


@triton.jit
def _select_kernel(
    src_ptr, bias_ptr, dead_ptr, out_ptr, aux_ptr,
    n_rows, n, stride_src, k, k_aux,
    ROWS: tl.constexpr, BLOCK: tl.constexpr, FROM_CANDIDATES: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_AUX: tl.constexpr, WRITE_BACK: tl.constexpr, FINAL: tl.constexpr,
):
    """ROWS rows x one chunk: load, bias, ReLU, key, then the top-k (and AuxK) of the chunk.
    `src` holds pre-activations, or packed candidates when FROM_CANDIDATES."""
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    chunk = tl.program_id(1)
    n_chunks = tl.num_programs(1)
    cols = chunk * BLOCK + tl.arange(0, BLOCK)
    row_ok = rows < n_rows
    inside = row_ok[:, None] & (cols < n)[None, :]
    offs = rows[:, None] * stride_src + cols[None, :]
    if FROM_CANDIDATES:
        # Latent indices fit int32 (d_sae < 2^31).
        x, idx = _unpack(tl.load(src_ptr + offs, mask=inside, other=0))
        valid = inside & (x >= 0)
    else:
        x = tl.load(src_ptr + offs, mask=inside, other=0.0)
        idx = tl.broadcast_to(cols[None, :], [ROWS, BLOCK])
        valid = inside
        if HAS_BIAS:
            bias = _round_like(tl.load(bias_ptr + cols, mask=cols < n, other=0.0).to(tl.float32), x.dtype)
            x = _round_like(x.to(tl.float32) + bias[None, :], x.dtype)
            if WRITE_BACK:
                tl.store(src_ptr + offs, x, mask=inside)
    x = x.to(tl.float32)
    relu = tl.where(x > 0, x, 0.0)
    keys = tl.where(valid, relu.to(tl.int32, bitcast=True), -2)
    _select_store(keys, idx, k, (rows * n_chunks + chunk) * k, row_ok, out_ptr, FINAL)
    if HAS_AUX:
        dead = tl.load(dead_ptr + cols, mask=cols < n, other=0) != 0
        aux_keys = tl.where(dead[None, :] | (keys == -2), keys, -1)
        _select_store(aux_keys, idx, k_aux, (rows * n_chunks + chunk) * k_aux, row_ok, aux_ptr, FINAL)


def _block_for(n: int, k: int, base: int) -> int | None:
    """Chunk length for a row of n keys: one chunk when it fits, else >= 2k so rounds shrink."""
    if n <= base:
        return max(16, triton.next_power_of_2(n))
    block = max(base, triton.next_power_of_2(2 * k))
    if block >= n:
        block = triton.next_power_of_2(n)
    return block if block <= MAX_BLOCK else None


def _num_warps(tile: int) -> int:
    """16 keys per thread: more per thread multiplies the registers the compaction's stores need."""
    return min(32, max(4, tile // 512))


def _rows_per_program(n_rows: int, block: int) -> int:
    """Several short rows share a program (a [ROWS, BLOCK] tile of at most TILE keys)."""
    return max(1, min(triton.next_power_of_2(n_rows), TILE // block))


def _launch(
    src: torch.Tensor, k: int, block: int, *, candidates: bool = False, bias: torch.Tensor | None = None,
    dead: torch.Tensor | None = None, k_aux: int = 0, write_back: bool = False, num_warps: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """One round: per-chunk top-k (and top-k_aux) of every row of `src` (pre-activations, or packed
    candidates), as packed int64 [B, n_chunks * k]; and whether this round was the final one."""
    n_rows, n = src.shape
    n_chunks = triton.cdiv(n, block)
    final = n_chunks == 1
    out = torch.empty(n_rows, n_chunks * k, dtype=torch.int64, device=src.device)
    aux = torch.empty(n_rows, n_chunks * k_aux, dtype=torch.int64, device=src.device)
    rows = _rows_per_program(n_rows, block)
    _select_kernel[(triton.cdiv(n_rows, rows), n_chunks)](
        src, src if bias is None else bias, src if dead is None else dead.view(torch.uint8), out, aux,
        n_rows, n, src.stride(0), k, k_aux,
        ROWS=rows, BLOCK=block, FROM_CANDIDATES=candidates, HAS_BIAS=bias is not None,
        HAS_AUX=k_aux > 0, WRITE_BACK=write_back, FINAL=final,
        num_warps=num_warps or _num_warps(rows * block),
    )
    return out, aux, final


def _reduce(packed: torch.Tensor, k: int, base: int, num_warps: int | None) -> torch.Tensor:
    """Tournament rounds over packed candidate rows until k remain per row."""
    final = False
    while not final:
        block = _block_for(packed.shape[1], k, base)
        assert block is not None, "a first round that fit always leaves rounds that fit"
        packed, _, final = _launch(packed, k, block, candidates=True, num_warps=num_warps)
    return packed


def unpack(packed_BK: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Packed int64 selections -> (values in `dtype`, int64 indices)."""
    words = packed_BK.view(torch.int32).view(*packed_BK.shape, 2)  # little-endian: index, value
    return words[..., 1].view(torch.float32).to(dtype, copy=True), words[..., 0].to(torch.int64)


def row_topk(
    pre_BF: torch.Tensor,
    k: int,
    bias_F: torch.Tensor | None = None,
    dead_F: torch.Tensor | None = None,
    k_aux: int = 0,
    *,
    write_back: bool = False,
    base_block: int = BASE_BLOCK,
    num_warps: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-k of ReLU(pre + bias) per row, and top-k_aux of it among `dead_F` latents.

    Returns (vals_BK, idx_BK, aux_vals_BA, aux_idx_BA) in `pre_BF`'s dtype and int64, unordered.
    `pre_BF` is overwritten with pre + bias only when `write_back` (it costs a [B, F] write).
    `base_block` is the chunk length and `num_warps` the warps per program (tests shrink the
    chunk to exercise the tournament rounds; the GPU benchmark sweeps both).
    """
    n_rows, d_sae = pre_BF.shape
    if dead_F is None:
        k_aux = 0
    block = _block_for(d_sae, max(k, k_aux), base_block)
    if block is None or n_rows == 0:
        # k above MAX_BLOCK / 2: the eager twin's torch.topk is the better tool anyway.
        src = pre_BF if write_back or bias_F is None else pre_BF.clone()
        bias = bias_F if bias_F is not None else src.new_zeros(())
        return eager.topk_select(src, bias, k, dead_F, k_aux)
    if pre_BF.stride(1) != 1:
        raise ValueError("pre_BF must have contiguous rows (stride 1 along d_sae); call .contiguous().")
    top, aux, final = _launch(
        pre_BF, k, block, bias=bias_F, dead=dead_F, k_aux=k_aux, write_back=write_back and bias_F is not None,
        num_warps=num_warps,
    )
    if not final:
        top = _reduce(top, k, base_block, num_warps)
        if k_aux > 0:
            aux = _reduce(aux, k_aux, base_block, num_warps)
    return *unpack(top, pre_BF.dtype), *unpack(aux, pre_BF.dtype)


def batch_topk(
    pre_BF: torch.Tensor, bias_F: torch.Tensor, k_total: int, *, base_block: int = BASE_BLOCK
) -> tuple[torch.Tensor, torch.Tensor]:
    """The k_total largest of ReLU(pre + bias) over the batch, padded per row (see module doc).

    `pre_BF` is overwritten with pre + bias. Returns (vals_BK, idx_BK) with K the largest per-row
    count (at least 1); padding has value 0 and index 0.
    """
    n_rows, d_sae = pre_BF.shape
    k_total = min(k_total, pre_BF.numel())
    cap = min(d_sae, 4 * triton.cdiv(max(k_total, 1), max(n_rows, 1)))
    bias: torch.Tensor | None = bias_F
    while True:
        vals, idx, _, _ = row_topk(pre_BF, cap, bias, write_back=True, base_block=base_block)
        bias = None  # applied in place by the first round
        keep_BC, inexact = _global_keep(vals, k_total, cap < d_sae)
        counts_B = keep_BC.sum(1)
        inexact_flag, k_max = torch.stack([inexact.long(), counts_B.max()]).tolist()
        if not inexact_flag:
            return _pad_rows(vals, idx, keep_BC, max(k_max, 1))
        cap = min(d_sae, 4 * cap)


def _global_keep(
    vals_BC: torch.Tensor, k_total: int, truncated: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask of the k_total largest positive candidates, and whether a truncated row may hide more."""
    flat = vals_BC.reshape(-1)
    if k_total >= flat.numel():
        thresh = flat.new_full((), -1.0)
    else:
        thresh = flat.topk(k_total, sorted=False).values.min()
    above = vals_BC > thresh
    tie = vals_BC == thresh
    room = k_total - above.sum()
    tie_rank = tie.reshape(-1).cumsum(0).view_as(tie)
    keep = (above | (tie & (tie_rank <= room))) & (vals_BC > 0)
    # A row whose smallest candidate beats the threshold may have further, unseen, winners.
    inexact = (vals_BC.min(1).values > thresh).any()
    return keep, inexact & truncated


def _pad_rows(
    vals_BC: torch.Tensor, idx_BC: torch.Tensor, keep_BC: torch.Tensor, k_max: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Move each row's kept entries to its front, zero the rest, and cut to k_max columns."""
    n_rows, cap = vals_BC.shape
    slot = torch.where(keep_BC, keep_BC.long().cumsum(1) - 1, cap)
    vals = vals_BC.new_zeros(n_rows, cap + 1).scatter_(1, slot, torch.where(keep_BC, vals_BC, 0))
    idx = idx_BC.new_zeros(n_rows, cap + 1).scatter_(1, slot, torch.where(keep_BC, idx_BC, 0))
    return vals[:, :k_max].contiguous(), idx[:, :k_max].contiguous()
