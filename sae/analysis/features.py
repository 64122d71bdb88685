"""Per-latent feature data for dashboards: one streaming pass over a corpus, all latents at once.

`compute_features(sae, model, source, n_tokens)`:
  1. Pack the corpus into token blocks (`pack_blocks`) and, batch by batch, harvest the SAE's
     hook and encode every position to a padded sparse code (BOS / pad rows zeroed).
  2. Fold each batch into a `FeatureStream` (see `_feature_stream`): firing counts, sums and
     maxima; a histogram on a fixed log-spaced grid (counts below / above the grid land in the
     end bins); the n_top contexts with the largest maximum (one per block, a window of tokens
     around the maximum); and a uniform sample of S = n_quantiles * per_quantile firing tokens
     by bottom-S priority sampling. Memory is O(F * (n_top + S) * window), whatever N is.
  3. Quantile groups: the sample, sorted by activation, is cut into n_quantiles groups of equal
     size, so group q holds the sample's q-th tenth (a stratified draw from every activation
     quantile interval, estimated from the sample). A second pass would give exact interval
     edges, but costs a second harvest; a uniform sample needs none and is exact as a sample.
  4. Logit effects (after the pass, no data needed): W_dec[f] through the final norm's
     elementwise weight (centred first for LayerNorm) and the unembedding W_U, i.e. the
     direct effect on the logits of adding the latent's decoder direction to the final
     residual stream, up to the per-token factor 1/rms(x) > 0 that the norm also applies,
     which scales every token alike and so changes no ranking. Leaving out the norm weight
     would rank tokens by the dot product with W_U alone, which the model never computes;
     norm biases are left out because they do not depend on the latent. Intermediate layers
     are ignored (this is the "direct path" of Bricken et al. 2023, "Towards
     Monosemanticity").
  5. Neighbours: the latents whose decoder rows have the largest cosine similarity.

Results save to a folder (`features.safetensors` + `features.json`) that `load_features` reads
back, so dashboards rebuild without a model.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from ..activations import Harvester, TokenBlocks, pack_blocks
from ..lm import LoadedModel
from ..model import SparseAutoencoder
from ._feature_stream import BatchView, FeatureStream

TENSORS_FILE = "features.safetensors"
META_FILE = "features.json"
FORMAT_VERSION = 1


@dataclass
class FeatureConfig:
    """What the feature pass computes and over which blocks."""

    n_top: int = 20
    """Top-activating contexts kept per latent (one per token block)."""
    n_quantiles: int = 10
    """Activation-quantile groups shown per latent."""
    per_quantile: int = 5
    """Sampled examples per quantile group (the reservoir holds n_quantiles * per_quantile)."""
    window_left: int = 16
    """Tokens kept before the activating token in every example."""
    window_right: int = 4
    """Tokens kept after it."""
    hist_min: float = 1e-3
    """Lower edge of the log-spaced activation histogram (smaller values count in the first bin)."""
    hist_max: float = 1e4
    """Upper edge (larger values count in the last bin)."""
    bins_per_decade: int = 10
    """Histogram resolution."""
    n_logits: int = 10
    """Promoted and suppressed tokens kept per latent."""
    n_neighbours: int = 10
    """Nearest latents by decoder cosine kept per latent."""
    final_norm: bool = True
    """Put the final norm's weight into the logit effects (see the module docstring)."""
    context: int = 128
    """Tokens per block (BOS included)."""
    batch: int = 8
    """Blocks per forward pass."""
    bos: str = "block"
    """BOS policy of `pack_blocks`: block or none."""
    text_field: str = "text"
    """Field or column holding the text in .jsonl / .csv sources."""
    seed: int = 0
    """Seed of the sampling keys."""

    def __post_init__(self) -> None:
        for name in ("n_top", "n_quantiles", "per_quantile", "bins_per_decade", "batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"FeatureConfig.{name} must be at least 1, got {getattr(self, name)}.")
        for name in ("window_left", "window_right", "n_logits", "n_neighbours"):
            if getattr(self, name) < 0:
                raise ValueError(f"FeatureConfig.{name} must be >= 0, got {getattr(self, name)}.")
        if not 0 < self.hist_min < self.hist_max:
            raise ValueError(f"FeatureConfig needs 0 < hist_min < hist_max, got {self.hist_min}, {self.hist_max}.")

    @property
    def n_sample(self) -> int:
        return self.n_quantiles * self.per_quantile

    def hist_edges(self) -> torch.Tensor:
        """Log-spaced bin edges [H + 1] from hist_min to hist_max."""
        lo, hi = torch.tensor([self.hist_min, self.hist_max], dtype=torch.float64).log10().tolist()
        n_bins = max(1, round((hi - lo) * self.bins_per_decade))
        return torch.logspace(lo, hi, n_bins + 1, dtype=torch.float64)


@dataclass
class FeatureData:
    """Everything a dashboard shows, for the latents `latents_F`. Example slots whose row is -1
    are empty (the latent fired in fewer contexts); windows hold token id -1 outside a block."""

    latents_F: torch.Tensor
    """int64 SAE latent ids, ascending."""
    n_tokens: int
    """Activation rows (tokens) seen."""
    count_F: torch.Tensor
    """int64 tokens on which each latent fired (activation > 0)."""
    mean_F: torch.Tensor
    """Mean activation over the tokens where it fired (0 when it never did)."""
    max_F: torch.Tensor
    """Largest activation."""
    hist_edges_H1: torch.Tensor
    """float64 log-spaced histogram edges."""
    hist_FH: torch.Tensor
    """int64 firing-token counts per bin."""
    top_val_FS: torch.Tensor
    """Maximum of each top context, descending."""
    top_row_FS: torch.Tensor
    """int64 global row (block * context + position) of that maximum."""
    top_tokens_FSW: torch.Tensor
    """int32 token ids of the window around it."""
    top_acts_FSW: torch.Tensor
    """The latent's activation on each window token."""
    sample_val_FS: torch.Tensor
    """Uniformly sampled firing tokens, by activation descending (quantile groups in order)."""
    sample_row_FS: torch.Tensor
    sample_tokens_FSW: torch.Tensor
    sample_acts_FSW: torch.Tensor
    logit_pos_ids_FL: torch.Tensor
    """int64 token ids most promoted by the decoder direction."""
    logit_pos_FL: torch.Tensor
    logit_neg_ids_FL: torch.Tensor
    """int64 token ids most suppressed."""
    logit_neg_FL: torch.Tensor
    neighbour_ids_FN: torch.Tensor
    """int64 latents with the most similar decoder rows."""
    neighbour_cos_FN: torch.Tensor
    token_strings: dict[int, str] = field(default_factory=dict)
    """Decoded text of every token id that appears above."""
    meta: dict[str, Any] = field(default_factory=dict)
    """model, hook, d_sae, source, window, config, timings."""

    @property
    def freq_F(self) -> torch.Tensor:
        """Firing frequency: fraction of tokens on which the latent fired."""
        return self.count_F.double() / max(1, self.n_tokens)

    def index_of(self, latent: int) -> int:
        """Row of SAE latent `latent` in these tensors."""
        pos = int(torch.searchsorted(self.latents_F, latent))
        if pos >= self.latents_F.numel() or int(self.latents_F[pos]) != latent:
            raise KeyError(f"latent {latent} was not analysed (analysed: {self.latents_F.numel()} latents).")
        return pos


@dataclass
class PassResult:
    """The streaming state after a pass and how long it took."""

    stream: FeatureStream
    n_tokens: int
    seconds: float
    """Wall time of the whole pass."""
    seconds_model: float
    """Of which the model forward (the harvest)."""
    seconds_encode: float
    """Of which the SAE encoder."""


def parse_latents(spec: str | None, d_sae: int) -> torch.Tensor:
    """Latent ids from `0-99,7,200-210` (ranges inclusive); all latents when spec is empty."""
    if not spec:
        return torch.arange(d_sae)
    ids: set[int] = set()
    for part in spec.split(","):
        part = part.strip()
        try:
            lo, _, hi = part.partition("-")
            a, b = int(lo), int(hi) if hi else int(lo)
        except ValueError:
            raise ValueError(f"--latents: cannot read {part!r}; write ids and ranges like 0-99,7,200-210.") from None
        if not 0 <= a <= b < d_sae:
            raise ValueError(f"--latents: {part!r} is outside 0-{d_sae - 1} (the SAE has {d_sae} latents).")
        ids.update(range(a, b + 1))
    return torch.tensor(sorted(ids), dtype=torch.int64)


def sparse_code(sae: SparseAutoencoder, x_BD: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The SAE's latents as a padded sparse code (vals_BK, idx_BK); padding has value 0."""
    if sae.cfg.activation == "topk":
        code = sae.encode_sparse(x_BD)
        return code.vals_BK, code.idx_BK
    lat_BF = sae.encode(x_BD)
    k = max(1, int((lat_BF > 0).sum(1).max()))
    vals_BK, idx_BK = lat_BF.topk(k, dim=1)
    return vals_BK.clamp_min(0), idx_BK


def _check_hook(sae: SparseAutoencoder, model: LoadedModel, hook: str | None) -> str:
    hook = hook or sae.cfg.hook_name
    if not hook:
        raise ValueError("The SAE does not name its hook (cfg.hook_name is empty); pass hook=..., "
                         "e.g. blocks.6.hook_resid_post.")
    d_model = model.d_model
    if "resid" in hook and sae.d_in != d_model:
        raise ValueError(f"SAE d_in is {sae.d_in} but {model.name} has d_model {d_model} at {hook}; "
                         f"is this SAE for another model?")
    return hook


@contextlib.contextmanager
def _one_thread(device: torch.device):
    """Run the statistics on one CPU thread: they are many small ops, which gain nothing from
    threads, and on a shared CPU OpenMP's spin-waiting made them 20x slower with two."""
    if device.type != "cpu":
        yield
        return
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


@torch.inference_mode()
def run_pass(sae: SparseAutoencoder, harvester: Harvester, blocks: TokenBlocks, latents_F: torch.Tensor,
             cfg: FeatureConfig, progress: bool = False) -> PassResult:
    """Step 1-2 of the module docstring: the one streaming pass."""
    from tqdm.auto import tqdm

    hook = harvester.hooks[0]
    dev = harvester.model.device
    stream = FeatureStream(latents_F.to(dev), sae.d_sae, cfg.n_top, cfg.n_sample, cfg.window_left,
                           cfg.window_right, cfg.hist_edges(), cfg.seed)
    n_blocks = blocks.tokens_NT.shape[0]
    bar = tqdm(total=blocks.n_rows, unit="tok", unit_scale=True, desc="features", disable=not progress)
    t_model = t_encode = 0.0
    t0 = time.perf_counter()
    for b0 in range(0, n_blocks, cfg.batch):
        tokens_NT = blocks.tokens_NT[b0:b0 + cfg.batch].to(dev)
        keep_NT = blocks.keep_NT[b0:b0 + cfg.batch].to(dev)
        t1 = time.perf_counter()
        x_BD = harvester.run(tokens_NT)[hook].flatten(2).flatten(0, 1)
        t2 = time.perf_counter()
        vals_BK, idx_BK = sparse_code(sae, x_BD)
        vals_BK = vals_BK * keep_NT.flatten()[:, None]
        t_model, t_encode = t_model + t2 - t1, t_encode + time.perf_counter() - t2
        n_kept = int(keep_NT.sum())
        with _one_thread(dev):
            stream.update(BatchView(vals_BK, idx_BK, tokens_NT, keep_NT, b0, sae.d_sae), n_kept)
        bar.update(n_kept)
    bar.close()
    return PassResult(stream, blocks.n_rows, time.perf_counter() - t0, t_model, t_encode)


def final_norm(model: LoadedModel) -> tuple[torch.Tensor | None, bool]:
    """The final norm's elementwise weight [D] (None when it has none) and whether it centres."""
    bridge = model.bridge
    kind = str(getattr(bridge.cfg, "normalization_type", "") or "")
    weight = None
    ln = getattr(bridge, "ln_final", None)
    if ln is not None:
        for name, param in ln.named_parameters():
            if name.rsplit(".", 1)[-1] in ("weight", "w"):
                weight = param.detach()
    return weight, kind.upper().startswith("LN")


@torch.no_grad()
def logit_effects(sae: SparseAutoencoder, model: LoadedModel, latents_F: torch.Tensor, n: int,
                  use_norm: bool = True, chunk: int = 256) -> tuple[torch.Tensor, ...]:
    """Top and bottom `n` tokens of (norm(W_dec[f])) @ W_U per latent (see the module docstring).

    Returns (pos_ids_FL, pos_FL, neg_ids_FL, neg_FL), computed `chunk` latents at a time so the
    [F, V] product never exists whole.
    """
    W_U_DV = model.bridge.W_U.detach().float()
    dirs_FD = sae.folded_state()["W_dec"][latents_F.to(sae.W_dec.device)].float().to(W_U_DV.device)
    weight_D, centre = final_norm(model) if use_norm else (None, False)
    if centre:
        dirs_FD = dirs_FD - dirs_FD.mean(-1, keepdim=True)
    if weight_D is not None:
        dirs_FD = dirs_FD * weight_D.float().to(W_U_DV.device)
    n = min(n, W_U_DV.shape[1])
    parts: list[tuple[torch.Tensor, ...]] = []
    for c0 in range(0, dirs_FD.shape[0], chunk):
        eff_FV = dirs_FD[c0:c0 + chunk] @ W_U_DV
        pos, neg = eff_FV.topk(n, dim=1), eff_FV.topk(n, dim=1, largest=False)
        parts.append((pos.indices, pos.values, neg.indices, neg.values))
    return tuple(torch.cat(p).cpu() for p in zip(*parts, strict=True)) if parts else (torch.zeros(0, n),) * 4


@torch.no_grad()
def decoder_neighbours(sae: SparseAutoencoder, latents_F: torch.Tensor, n: int,
                       chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """The `n` latents (itself excluded) whose decoder rows are closest in cosine: ids, cosines."""
    unit_AD = torch.nn.functional.normalize(sae.W_dec.detach().float(), dim=1)
    n = min(n, unit_AD.shape[0] - 1)
    ids, coss = [], []
    for c0 in range(0, latents_F.numel(), chunk):
        lat = latents_F[c0:c0 + chunk].to(unit_AD.device)
        cos_FA = unit_AD[lat] @ unit_AD.t()
        cos_FA[torch.arange(lat.numel()), lat] = -float("inf")
        top = cos_FA.topk(n, dim=1)
        ids.append(top.indices.cpu())
        coss.append(top.values.cpu())
    return torch.cat(ids), torch.cat(coss)


def quantile_groups(sample_val_S: torch.Tensor, n_quantiles: int) -> list[tuple[int, int]]:
    """Slot ranges [start, stop) of the quantile groups of one latent's sample, highest first.

    The filled slots (value > 0, sorted descending) are cut into n_quantiles runs of sizes that
    differ by at most one; empty groups are left out.
    """
    m = int((sample_val_S > 0).sum())
    bounds = [round(q * m / n_quantiles) for q in range(n_quantiles + 1)]
    return [(bounds[q], bounds[q + 1]) for q in range(n_quantiles) if bounds[q + 1] > bounds[q]]


def token_strings(tokenizer: Any, ids: torch.Tensor) -> dict[int, str]:
    """Decoded text of every distinct non-negative id in `ids`."""
    uniq = [int(i) for i in torch.unique(ids[ids >= 0]).tolist()]
    texts = tokenizer.batch_decode([[i] for i in uniq], clean_up_tokenization_spaces=False)
    return dict(zip(uniq, texts, strict=True))


def _from_stream(stream: FeatureStream, n_tokens: int, cfg: FeatureConfig) -> dict[str, Any]:
    count = stream.count_F.cpu()
    out = {"latents_F": stream.latents_F.cpu(), "n_tokens": n_tokens, "count_F": count,
           "mean_F": (stream.sum_F.cpu() / count.clamp_min(1)).float(), "max_F": stream.max_F.cpu(),
           "hist_edges_H1": cfg.hist_edges(), "hist_FH": stream.hist_FH.cpu()}
    for prefix, slots in (("top", stream.top), ("sample", stream.sample)):
        out.update({f"{prefix}_{k}": v.cpu() for k, v in slots.ordered().items()})
    return out


def compute_features(sae: SparseAutoencoder, model: LoadedModel, source: str, n_tokens: int,
                     cfg: FeatureConfig | None = None, latents: torch.Tensor | str | None = None,
                     hook: str | None = None, progress: bool = True) -> FeatureData:
    """Feature data of `latents` (default: all) over `n_tokens` tokens of `source`."""
    cfg = cfg or FeatureConfig()
    hook = _check_hook(sae, model, hook)
    latents_F = parse_latents(latents, sae.d_sae) if latents is None or isinstance(latents, str) else latents
    latents_F = torch.unique(latents_F.to(torch.int64))
    blocks = pack_blocks(source, model.tokenizer, cfg.context, n_tokens, bos=cfg.bos, text_field=cfg.text_field)
    sae = sae.to(model.device).eval()
    passed = run_pass(sae, Harvester(model, [hook]), blocks, latents_F, cfg, progress)
    t0 = time.perf_counter()
    logits = logit_effects(sae, model, latents_F, cfg.n_logits, cfg.final_norm)
    nbr_ids, nbr_cos = decoder_neighbours(sae, latents_F, cfg.n_neighbours)
    parts = _from_stream(passed.stream, passed.n_tokens, cfg)
    used = torch.cat([parts["top_tokens_FSW"].flatten().long(), parts["sample_tokens_FSW"].flatten().long(),
                      logits[0].flatten(), logits[2].flatten()])
    meta = {"model": model.name, "hook": hook, "d_sae": sae.d_sae, "d_in": sae.d_in,
            "activation": sae.cfg.activation, "source": str(source), "config": asdict(cfg),
            "seconds_pass": round(passed.seconds, 3), "seconds_model": round(passed.seconds_model, 3),
            "seconds_encode": round(passed.seconds_encode, 3), "seconds_weights": round(time.perf_counter() - t0, 3),
            "logits": "W_dec through the final norm weight and W_U" if cfg.final_norm else "W_dec @ W_U"}
    return FeatureData(**parts, logit_pos_ids_FL=logits[0], logit_pos_FL=logits[1], logit_neg_ids_FL=logits[2],
                       logit_neg_FL=logits[3], neighbour_ids_FN=nbr_ids, neighbour_cos_FN=nbr_cos,
                       token_strings=token_strings(model.tokenizer, used), meta=meta)


def _tensor_fields() -> list[str]:
    return [f.name for f in fields(FeatureData) if f.name not in ("n_tokens", "token_strings", "meta")]


def save_features(data: FeatureData, folder: str | Path) -> Path:
    """Write `features.safetensors` (every tensor) and `features.json` (counts, strings, meta)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: getattr(data, k).contiguous() for k in _tensor_fields()}, folder / TENSORS_FILE)
    meta = {"format_version": FORMAT_VERSION, "n_tokens": data.n_tokens, "meta": data.meta,
            "token_strings": {str(k): v for k, v in data.token_strings.items()}}
    (folder / META_FILE).write_text(json.dumps(meta, ensure_ascii=False), encoding="utf-8")
    return folder


def load_features(folder: str | Path) -> FeatureData:
    """Read a folder written by `save_features`."""
    from safetensors.torch import load_file

    folder = Path(folder)
    if not (folder / TENSORS_FILE).is_file() or not (folder / META_FILE).is_file():
        raise FileNotFoundError(f"{folder} holds no feature data ({TENSORS_FILE} + {META_FILE}); "
                                f"compute it with `sae dashboard --sae ... --data ...`.")
    meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{folder / META_FILE} has format_version {meta.get('format_version')}, "
                         f"this code reads {FORMAT_VERSION}; recompute the feature data.")
    tensors = load_file(folder / TENSORS_FILE)
    strings = {int(k): v for k, v in meta["token_strings"].items()}
    return FeatureData(**tensors, n_tokens=meta["n_tokens"], token_strings=strings, meta=meta["meta"])
