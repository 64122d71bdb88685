"""The streaming state behind `sae.analysis.features`: O(F) buffers updated once per batch.

Every update sees a batch of N token blocks of T positions as a padded sparse code
(vals_BK, idx_BK) over B = N*T rows, with BOS and pad rows already zeroed. All work is done on
the E firing (row, latent) pairs of the batch, never in a Python loop over latents:
  1. counts, sums, maxima and a log-grid histogram: one `bincount` / `scatter_reduce` each;
  2. top contexts: each latent's maximum over every block ([N, F] via scatter_reduce amax) is
     ranked against the [F, n_top] slots by (value desc, row asc) with stable sorts over
     [F, n_top + N]; winning blocks overwrite the slots that lost. A block gives at most one
     context per latent, so contexts differ; ties go to the earlier row;
  3. quantile reservoir: bottom-S priority sampling. Every firing pair gets a key
     `priority(row, latent)` in [0, 1) from an integer hash; a latent keeps the S pairs with the
     smallest keys, which is a uniform sample without replacement of its firing tokens (Cohen &
     Kaplan 2007, "Summarizing data using bottom-k sketches"). Only pairs whose key beats the
     latent's largest kept key are candidates (about S/n of a latent's n-th firing), so after a
     warm-up few pairs per batch are touched. Winning candidates overwrite the slots with the
     largest keys; slots are unordered until the end.
Token windows and per-token activations are gathered only for new winners of 2 and 3 (from a
dense [B, d_sae] copy of the batch's code), so the state never holds more than
F * (n_top + S) windows, however long the corpus. Slots are unordered until `ordered()`.

Local suffixes: E firing entries, S buffer slots, W window positions, H histogram bins,
U latents touched by a merge, C candidates.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

_EMPTY_KEY = 2.0  # larger than every real key (keys lie in [0, 1)) so empty slots sort last
_MASK32 = 0xFFFFFFFF


def priority(rows: torch.Tensor, latents: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """A pseudo-random key in [0, 1) (float64, 32 bits) for each (global row, latent) pair.

    An integer mixing hash with multipliers below 2**31, so every product fits in int64.
    """
    h = (rows.to(torch.int64) * 0x9E3779B1 + latents.to(torch.int64) * 0x85EBCA77 + seed * 0x27D4EB2F) & _MASK32
    h = h ^ (h >> 16)
    h = (h * 0x7FEB352D) & _MASK32
    h = h ^ (h >> 15)
    h = (h * 0x68E31DA5) & _MASK32
    h = h ^ (h >> 16)
    return h.to(torch.float64) / 2.0**32


@dataclass
class Window:
    """Token ids and one latent's activations at offsets -left..right around a row."""

    tokens_EW: torch.Tensor
    """int32; -1 where the position lies outside the block or is BOS / pad."""
    acts_EW: torch.Tensor
    """float32 activations of the latent at those positions (0 outside)."""


class BatchView:
    """One batch: the sparse code of every row, the token ids, and lookups on them."""

    def __init__(self, vals_BK: torch.Tensor, idx_BK: torch.Tensor, tokens_NT: torch.Tensor,
                 keep_NT: torch.Tensor, block0: int, d_sae: int):
        self.N, self.T = tokens_NT.shape
        self.vals_BK, self.idx_BK, self.d_sae = vals_BK, idx_BK, d_sae
        self.tokens_B = torch.where(keep_NT, tokens_NT, -1).flatten().to(torch.int32)
        self.block0 = block0
        self._dense_BF: torch.Tensor | None = None

    def global_row(self, row_E: torch.Tensor) -> torch.Tensor:
        """Row index in the whole pass: block * T + position."""
        return row_E + self.block0 * self.T

    def dense(self) -> torch.Tensor:
        """The batch's latents as a dense [B, d_sae] tensor, built once on first use (a memset
        and one scatter: far cheaper than searching the sparse code for every window token)."""
        if self._dense_BF is None:
            B, K = self.vals_BK.shape
            self._dense_BF = torch.zeros(B, self.d_sae, device=self.vals_BK.device)
            self._dense_BF.scatter_(1, self.idx_BK, self.vals_BK.float())
        return self._dense_BF

    def window(self, row_E: torch.Tensor, latent_E: torch.Tensor, left: int, right: int) -> Window:
        """Tokens and activations of `latent_E` (SAE ids) around each batch row `row_E`."""
        offs_W = torch.arange(-left, right + 1, device=row_E.device)
        pos_EW = (row_E % self.T)[:, None] + offs_W
        inside_EW = (pos_EW >= 0) & (pos_EW < self.T)
        rows_EW = torch.where(inside_EW, row_E[:, None] + offs_W, 0)
        tokens_EW = torch.where(inside_EW, self.tokens_B[rows_EW], -1)
        acts_EW = self.dense()[rows_EW, latent_E[:, None]] * inside_EW
        return Window(tokens_EW, acts_EW)


class FeatureStream:
    """Running statistics of `latents` (SAE ids) over a stream of batches."""

    def __init__(self, latents_F: torch.Tensor, d_sae: int, n_top: int, n_sample: int,
                 left: int, right: int, hist_edges_H1: torch.Tensor, seed: int = 0):
        F, W, dev = latents_F.numel(), left + right + 1, latents_F.device
        self.latents_F, self.left, self.right, self.seed = latents_F, left, right, seed
        self.column = torch.full((d_sae,), -1, dtype=torch.int64, device=dev)
        self.column[latents_F] = torch.arange(F, device=dev)
        self.log_edges_H1 = hist_edges_H1.log10().to(dev)
        self.n_rows = 0
        self.count_F = torch.zeros(F, dtype=torch.int64, device=dev)
        self.sum_F = torch.zeros(F, dtype=torch.float64, device=dev)
        self.max_F = torch.zeros(F, device=dev)
        self.hist_FH = torch.zeros(F, hist_edges_H1.numel() - 1, dtype=torch.int64, device=dev)
        self.top = _Slots(F, n_top, W, dev)
        self.sample = _Slots(F, n_sample, W, dev)
        self.sample.key_FS = torch.full((F, n_sample), _EMPTY_KEY, dtype=torch.float64, device=dev)

    @torch.no_grad()
    def update(self, batch: BatchView, n_kept: int) -> None:
        """Fold one batch into the state (see the module docstring)."""
        row_E, col_E, val_E = self._entries(batch)
        self.n_rows += n_kept
        self._moments(col_E, val_E)
        self._merge_top(batch, row_E, col_E, val_E)
        self._merge_sample(batch, row_E, col_E, val_E)

    def _entries(self, batch: BatchView) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Firing pairs of analysed latents: batch row, column in the state, value."""
        col_BK = self.column[batch.idx_BK]
        row_E, k_E = ((batch.vals_BK > 0) & (col_BK >= 0)).nonzero(as_tuple=True)
        return row_E, col_BK[row_E, k_E], batch.vals_BK[row_E, k_E].float()

    def _moments(self, col_E: torch.Tensor, val_E: torch.Tensor) -> None:
        F, H = self.hist_FH.shape
        self.count_F += torch.bincount(col_E, minlength=F)
        self.sum_F += torch.bincount(col_E, weights=val_E.double(), minlength=F)
        self.max_F.scatter_reduce_(0, col_E, val_E, "amax")
        bin_E = torch.bucketize(val_E.log10(), self.log_edges_H1[1:-1], right=True)
        self.hist_FH += torch.bincount(col_E * H + bin_E, minlength=F * H).view(F, H)

    def _merge_top(self, batch: BatchView, row_E, col_E, val_E) -> None:
        top = self.top
        F, S = top.val_FS.shape
        N, T = batch.N, batch.T
        cell_E = (row_E // T) * F + col_E
        # -1 where a latent never fired in a block, so such blocks never displace a slot.
        best_NF = torch.full((N * F,), -1.0, device=val_E.device).scatter_reduce_(0, cell_E, val_E, "amax")
        # Position of each block maximum: the first row holding it.
        at_max_E = val_E == best_NF[cell_E]
        pos_NF = torch.full((N * F,), T - 1, dtype=torch.int64, device=val_E.device)
        pos_NF.scatter_reduce_(0, cell_E[at_max_E], row_E[at_max_E] % T, "amin")
        row_FN = (torch.arange(N, device=val_E.device)[:, None] * T + pos_NF.view(N, F)).t()
        # Rank slots and candidates by (value desc, row asc) with two stable sorts, so ties go to
        # the earlier row whatever the batch size.
        val_FC = torch.cat([top.val_FS, best_NF.view(N, F).t()], 1)
        grow_FC = torch.cat([top.row_FS, batch.global_row(row_FN)], 1)
        by_row = grow_FC.argsort(dim=1, stable=True)
        pick_FS = by_row.gather(1, val_FC.gather(1, by_row).argsort(dim=1, descending=True, stable=True))[:, :S]
        new_FS = pick_FS >= S
        if not new_FS.any():
            return
        # Each winning block takes a slot that lost: pair them in order, latent by latent.
        # (New picks scatter into a spare column S.)
        kept_FS = torch.zeros(F, S + 1, dtype=torch.bool, device=new_FS.device)
        kept_FS = kept_FS.scatter_(1, torch.where(new_FS, S, pick_FS), True)[:, :S]
        f_C, s_C = (~kept_FS).nonzero(as_tuple=True)
        pick_C = pick_FS[new_FS] - S
        row_C = row_FN[f_C, pick_C]
        top.val_FS[f_C, s_C] = best_NF.view(N, F)[pick_C, f_C]
        top.put(f_C, s_C, batch, row_C, self.latents_F[f_C], torch.ones_like(f_C, dtype=torch.bool),
                self.left, self.right)

    def _merge_sample(self, batch: BatchView, row_E, col_E, val_E) -> None:
        smp = self.sample
        S = smp.val_FS.shape[1]
        key_E = priority(batch.global_row(row_E), self.latents_F[col_E], self.seed)
        cand_E = key_E < smp.key_FS.max(1).values[col_E]
        if not cand_E.any():
            return
        row_C, f_C, val_C, key_C = row_E[cand_E], col_E[cand_E], val_E[cand_E], key_E[cand_E]
        # Order candidates by (latent, key); a candidate's rank in the union of its latent's
        # slots and candidates is (slots with a smaller key) + (candidates with a smaller key).
        order = torch.sort(key_C, stable=True).indices
        order = order[torch.sort(f_C[order], stable=True).indices]
        row_C, f_C, val_C, key_C = row_C[order], f_C[order], val_C[order], key_C[order]
        among_C = torch.arange(f_C.numel(), device=f_C.device) - torch.searchsorted(f_C, f_C)
        below_C = (smp.key_FS[f_C] < key_C[:, None]).sum(1)
        win = below_C + among_C < S
        row_C, f_C, val_C, key_C, among_C = row_C[win], f_C[win], val_C[win], key_C[win], among_C[win]
        # Winners of a latent are its first w candidates; they evict its w largest-key slots.
        u_U, w_U = torch.unique_consecutive(f_C, return_counts=True)
        evict_UW = smp.key_FS[u_U].topk(int(w_U.max()), dim=1).indices
        u_of = torch.repeat_interleave(torch.arange(u_U.numel(), device=f_C.device), w_U)
        s_C = evict_UW[u_of, among_C]
        smp.key_FS[f_C, s_C] = key_C
        smp.val_FS[f_C, s_C] = val_C
        smp.put(f_C, s_C, batch, row_C, self.latents_F[f_C], torch.ones_like(win[win]), self.left, self.right)


class _Slots:
    """Per-latent slots holding a value, the global row and a token window each."""

    def __init__(self, F: int, S: int, W: int, dev: torch.device):
        self.val_FS = torch.zeros(F, S, device=dev)
        self.row_FS = torch.full((F, S), -1, dtype=torch.int64, device=dev)
        self.tokens_FSW = torch.full((F, S, W), -1, dtype=torch.int32, device=dev)
        self.acts_FSW = torch.zeros(F, S, W, device=dev)
        self.key_FS: torch.Tensor | None = None

    def ordered(self) -> dict[str, torch.Tensor]:
        """The slots by value descending, ties by row ascending (empty slots, value 0, last)."""
        by_row = torch.where(self.row_FS >= 0, self.row_FS, torch.iinfo(torch.int64).max).argsort(dim=1, stable=True)
        order_FS = by_row.gather(1, self.val_FS.gather(1, by_row).argsort(dim=1, descending=True, stable=True))
        idx_FSW = order_FS[..., None].expand(-1, -1, self.tokens_FSW.shape[-1])
        return {"val_FS": self.val_FS.gather(1, order_FS), "row_FS": self.row_FS.gather(1, order_FS),
                "tokens_FSW": self.tokens_FSW.gather(1, idx_FSW), "acts_FSW": self.acts_FSW.gather(1, idx_FSW)}

    def put(self, f_C, s_C, batch: BatchView, row_C, latent_C, fired_C, left: int, right: int) -> None:
        """Write new winners: the global row (-1 when the value is 0) and its window."""
        win = batch.window(row_C, latent_C, left, right)
        self.row_FS[f_C, s_C] = torch.where(fired_C, batch.global_row(row_C), -1)
        self.tokens_FSW[f_C, s_C] = torch.where(fired_C[:, None], win.tokens_EW, -1)
        self.acts_FSW[f_C, s_C] = win.acts_EW * fired_C[:, None]
