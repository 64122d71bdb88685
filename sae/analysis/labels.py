"""Deterministic latent labels from weights and a corpus (LLM-written labels come later).

For each latent:
  1. Logit effects: the tokens its decoder row promotes and suppresses most, W_dec[f] through the
     final norm's weight and the unembedding W_U (the direct path; Bricken et al. 2023), from
     `sae.analysis.features.logit_effects`.
  2. Top contexts on a corpus: the windows around its largest activations, from one streaming
     pass of `sae.analysis.features.compute_features` restricted to the latents asked for; the
     activating token of each context is marked with [[ ]].
  3. Top activating tokens: the distinct tokens at the maxima of those contexts, most frequent
     first (ties by the order of the contexts).
  4. The label is a fixed template of these, plus the behaviour association when given:
     `promotes "a", "b" | fires on "c", "d" | sycophancy+ (AUROC 0.71)`.
The same SAE, model, corpus and settings always give the same label.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from ..lm import LoadedModel
from ..model import SparseAutoencoder
from .features import FeatureConfig, FeatureData, compute_features, logit_effects, token_strings


@dataclass
class LabelConfig:
    """What goes into a label."""

    n_tokens: int = 4
    """Promoted tokens and activating tokens named in the label."""
    n_contexts: int = 5
    """Top contexts kept per latent."""
    corpus_tokens: int = 8192
    """Corpus tokens scanned for top contexts (0: weights only)."""
    context: int = 128
    """Tokens per corpus block."""
    window_left: int = 12
    """Context tokens shown before the activating token."""
    window_right: int = 3
    """And after it."""

    def __post_init__(self) -> None:
        for name in ("n_tokens", "n_contexts", "corpus_tokens", "window_left", "window_right"):
            if getattr(self, name) < 0:
                raise ValueError(f"LabelConfig.{name} must be >= 0, got {getattr(self, name)}.")
        if self.n_contexts < 1:
            raise ValueError("LabelConfig.n_contexts must be at least 1.")


@dataclass
class LatentLabel:
    """A latent's label and the evidence behind it."""

    latent: int
    label: str
    promoted: list[str]
    suppressed: list[str]
    top_tokens: list[str] = field(default_factory=list)
    contexts: list[str] = field(default_factory=list)
    context_acts: list[float] = field(default_factory=list)
    behaviour: str = ""
    """e.g. `sycophancy+ (AUROC 0.71)`."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _quote(tokens: list[str]) -> str:
    return ", ".join(repr(t) for t in tokens)


def _windows(data: FeatureData, row: int, n: int, strings: dict[int, str],
             left: int) -> tuple[list[str], list[float], list[str]]:
    contexts, acts, tops = [], [], []
    for s in range(min(n, data.top_val_FS.shape[1])):
        val = float(data.top_val_FS[row, s])
        if val <= 0:
            break
        ids = data.top_tokens_FSW[row, s].tolist()
        pieces = []
        for w, tok in enumerate(ids):
            if tok < 0:
                continue
            text = strings.get(int(tok), "")
            pieces.append(f"[[{text}]]" if w == left else text)
        contexts.append("".join(pieces))
        acts.append(val)
        tops.append(strings.get(int(ids[left]), "") if ids[left] >= 0 else "")
    return contexts, acts, tops


def label_latents(sae: SparseAutoencoder, model: LoadedModel, latents: list[int], corpus: str | None = None,
                  cfg: LabelConfig | None = None, behaviour: dict[int, str] | None = None) -> list[LatentLabel]:
    """Labels of `latents` (steps 1-4 of the module docstring), in the order given."""
    cfg = cfg or LabelConfig()
    if not latents:
        return []
    lat_F = torch.tensor(sorted(set(latents)), dtype=torch.int64)
    pos_ids, _, neg_ids, _ = logit_effects(sae, model, lat_F, cfg.n_tokens)
    strings = token_strings(model.tokenizer, torch.cat([pos_ids.flatten(), neg_ids.flatten()]))
    data = None
    if corpus and cfg.corpus_tokens:
        fcfg = FeatureConfig(n_top=cfg.n_contexts, n_quantiles=1, per_quantile=1, window_left=cfg.window_left,
                             window_right=cfg.window_right, n_logits=0, n_neighbours=0, context=cfg.context)
        data = compute_features(sae, model, corpus, cfg.corpus_tokens, fcfg, latents=lat_F, progress=False)
        strings.update(data.token_strings)
    out = []
    for latent in latents:
        row = int((lat_F == latent).nonzero()[0, 0])
        promoted = [strings[int(i)] for i in pos_ids[row].tolist()]
        suppressed = [strings[int(i)] for i in neg_ids[row].tolist()]
        contexts, acts, tops = _windows(data, row, cfg.n_contexts, strings, cfg.window_left) if data else ([], [], [])
        top_tokens = [t for t, _ in Counter(tops).most_common(cfg.n_tokens)]
        assoc = (behaviour or {}).get(latent, "")
        parts = [f"promotes {_quote(promoted)}"]
        if top_tokens:
            parts.append(f"fires on {_quote(top_tokens)}")
        if assoc:
            parts.append(assoc)
        out.append(LatentLabel(latent, " | ".join(parts), promoted, suppressed, top_tokens, contexts, acts, assoc))
    return out
