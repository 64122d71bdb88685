"""An offline feature dashboard from `FeatureData`: one index page plus one small file per latent.

Layout of the output folder:
    index.html        the summary table (sortable, searchable) and a density-vs-mean-activation
                      scatter; plotly.js, CSS and the app are inlined once, so the page opens
                      from file:// with no server and no network
    latents/<id>.js   one latent's view data, `SAEDash.register({...})`; the page adds it as a
                      <script> tag when the latent is opened (fetch() is refused on file://),
                      so thousands of latents cost nothing until viewed

Every string from the corpus, the tokenizer or a label travels as JSON and is written into the
page with `textContent` only. JSON placed inside index.html has `<`, `>` and `&` escaped as
\\u003c, \\u003e, \\u0026, so no data can close a <script> element; the few strings written as
HTML in Python go through `html.escape`.
"""

from __future__ import annotations

import html
import json
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..analysis.features import (
    FeatureConfig,
    FeatureData,
    compute_features,
    load_features,
    quantile_groups,
    save_features,
)

ASSETS = Path(__file__).with_name("assets")
_COLUMNS = ["id", "label", "freq", "mean", "max", "count", "top_tokens", "top_logits"]


@dataclass
class DashboardResult:
    """What `write_dashboard` wrote."""

    index: Path
    """The index.html to open."""
    n_latents: int
    """Latents in the table (one file each under latents/)."""
    megabytes: float
    """Size of everything written."""
    seconds: float
    """Wall time."""


def js_json(obj: Any) -> str:
    """JSON that is also safe inside an HTML <script> element and in a .js file (ASCII only)."""
    text = json.dumps(obj, ensure_ascii=True, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def round_sig(t: torch.Tensor, digits: int = 4) -> list:
    """Values with `digits` significant digits, as (nested) Python floats, for compact JSON."""
    t = t.double()
    scale = 10.0 ** (digits - 1 - t.abs().clamp_min(1e-30).log10().floor())
    return torch.where(t == 0, 0.0, (t * scale).round() / scale).tolist()


class _Lists:
    """`FeatureData` as rounded Python lists, converted once for all latents (per-latent tensor
    calls made writing 4608 latent files take a minute)."""

    def __init__(self, data: FeatureData):
        self.table = data.token_strings
        cfg = data.meta["config"]
        self.centre, self.n_q = int(cfg["window_left"]), int(cfg["n_quantiles"])
        self.ids, self.count = data.latents_F.tolist(), data.count_F.tolist()
        self.freq, self.mean, self.max = round_sig(data.freq_F), round_sig(data.mean_F), round_sig(data.max_F)
        self.slots = {p: (round_sig(getattr(data, f"{p}_val_FS")), getattr(data, f"{p}_row_FS").tolist(),
                          getattr(data, f"{p}_tokens_FSW").tolist(), round_sig(getattr(data, f"{p}_acts_FSW")))
                      for p in ("top", "sample")}
        self.logits = {k: (getattr(data, f"logit_{k}_ids_FL").tolist(), round_sig(getattr(data, f"logit_{k}_FL")))
                       for k in ("pos", "neg")}
        self.nbr = (data.neighbour_ids_FN.tolist(), data.neighbour_cos_FN.tolist())
        self.hist, self.edges = data.hist_FH.tolist(), round_sig(data.hist_edges_H1)

    def name(self, token_id: int) -> str:
        """The decoded text of a token (unknown ids show as <id>)."""
        text = self.table.get(token_id)
        return text if text is not None else f"<{token_id}>"


def _top_tokens(L: _Lists, i: int, n: int = 3) -> list[str]:
    """The tokens most often at the maximum of the latent's top contexts."""
    _, rows, toks, _ = L.slots["top"]
    ids = [w[L.centre] for w, r in zip(toks[i], rows[i], strict=True) if r >= 0 and w[L.centre] >= 0]
    return [L.name(t) for t, _ in Counter(ids).most_common(n)]


def summary_rows(L: _Lists, labels: dict[int, str]) -> list[list[Any]]:
    """One row per latent, in the order of `_COLUMNS`."""
    pos_ids = L.logits["pos"][0]
    return [[latent, labels.get(latent, ""), L.freq[i], L.mean[i], L.max[i], L.count[i], _top_tokens(L, i),
             [L.name(t) for t in pos_ids[i][:3]]] for i, latent in enumerate(L.ids)]


def _examples(L: _Lists, prefix: str, i: int) -> list[dict[str, Any]]:
    """Filled slots as {v: value, i: index of the activating token, t: tokens, a: activations},
    with the positions outside the block trimmed."""
    vals, rows, toks, acts = (x[i] for x in L.slots[prefix])
    out = []
    for s, row in enumerate(rows):
        if row < 0:
            continue
        keep = [j for j, t in enumerate(toks[s]) if t >= 0]
        lo, hi = keep[0], keep[-1] + 1
        out.append({"v": vals[s], "i": L.centre - lo, "t": [L.name(t) if t >= 0 else "" for t in toks[s][lo:hi]],
                    "a": acts[s][lo:hi]})
    return out


def _histogram(L: _Lists, i: int) -> dict[str, list]:
    counts = L.hist[i]
    nz = [h for h, c in enumerate(counts) if c]
    if not nz:
        return {"edges": [], "counts": []}
    lo, hi = nz[0], nz[-1] + 1
    return {"edges": L.edges[lo:hi + 1], "counts": counts[lo:hi]}


def latent_record(L: _Lists, i: int) -> dict[str, Any]:
    """Everything the latent view shows for row `i`."""
    sample = _examples(L, "sample", i)
    quant = []
    filled = torch.tensor([e["v"] for e in sample] + [0.0])
    for q, (a, b) in enumerate(quantile_groups(filled, L.n_q)):
        group = sample[a:b]
        # Groups run from the highest activations down; number them n_q (top) to 1.
        quant.append({"q": L.n_q - q, "lo": group[-1]["v"], "hi": group[0]["v"], "ex": group})
    return {
        "id": L.ids[i], "count": L.count[i], "freq": L.freq[i], "mean": L.mean[i], "max": L.max[i],
        "hist": _histogram(L, i), "top": _examples(L, "top", i), "quant": quant,
        **{k: [[L.name(t), v] for t, v in zip(ids[i], vals[i], strict=True)] for k, (ids, vals) in L.logits.items()},
        "nbr": [[j, round(c, 4)] for j, c in zip(L.nbr[0][i], L.nbr[1][i], strict=True)],
    }


def _meta_line(data: FeatureData) -> str:
    m = data.meta
    dead = int((data.count_F == 0).sum())
    return (f"{m.get('model', '?')} · {m.get('hook', '?')} · {m.get('activation', '')} SAE, d_sae {m.get('d_sae')} · "
            f"{data.latents_F.numel()} latents analysed on {data.n_tokens:,} tokens of {Path(m.get('source', '')).name}"
            f" · {dead} never fired")


def _table_head() -> str:
    heads = [("id", "Latent", True), ("label", "Label", False), ("freq", "Density", True),
             ("mean", "Mean act.", True), ("max", "Max act.", True), ("top_tokens", "Top activating tokens", False),
             ("top_logits", "Promoted logits", False)]
    cells = "".join(f'<th data-key="{k}"{" class=num" if num else ""}>{html.escape(t)}<span class="arrow"></span></th>'
                    for k, t, num in heads)
    return f"<thead><tr>{cells}</tr></thead>"


def render_index(data: FeatureData, rows: list[list[Any]], title: str) -> str:
    """index.html: styles, plotly.js and the app inlined once; the summary as escaped JSON."""
    from plotly.offline import get_plotlyjs

    cfg = data.meta.get("config", {})
    summary = {"columns": _COLUMNS, "rows": rows,
               "meta": {"n_quantiles": cfg.get("n_quantiles", 10), "n_tokens": data.n_tokens}}
    alive = data.count_F > 0
    cards = [("latents", f"{data.latents_F.numel():,}"), ("tokens", f"{data.n_tokens:,}"),
             ("never fired", f"{int((~alive).sum()):,}"),
             ("median density", f"{float(data.freq_F[alive].median()) * 100:.3g}%" if alive.any() else "-")]
    card_html = "".join(f'<div class="card"><div class="k">{html.escape(k)}</div><div class="v">{html.escape(v)}</div>'
                        f"</div>" for k, v in cards)
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{(ASSETS / 'features.css').read_text()}</style>"
        f"<script>{get_plotlyjs()}</script></head><body>"
        f'<header><h1>{html.escape(title)}</h1><div class="meta">{html.escape(_meta_line(data))}</div></header>'
        f'<main><section id="overview"><div class="cards">{card_html}</div>'
        '<h2>Density and mean activation<span class="sub">one point per latent that fired; click to open</span></h2>'
        '<div class="panel"><div id="scatter" class="plot"></div></div>'
        '<div class="toolbar"><input id="search" type="search" placeholder="Search latent id, label or token"'
        ' autocomplete="off"><span id="count"></span></div>'
        f'<div class="table-wrap"><table id="latent-table">{_table_head()}<tbody></tbody></table></div></section>'
        '<section id="latent-view" hidden></section></main>'
        f'<script id="summary-data" type="application/json">{js_json(summary)}</script>'
        f"<script>{(ASSETS / 'features.js').read_text()}</script></body></html>"
    )


def write_dashboard(data: FeatureData, out: str | Path, labels: dict[int, str] | None = None,
                    title: str | None = None) -> DashboardResult:
    """Write index.html and latents/<id>.js for every latent of `data` into `out`.

    `labels` maps latent id -> a short description shown in the table and the latent view.
    A previous latents/ folder in `out` is replaced, so no stale latent files remain.
    """
    t0 = time.perf_counter()
    out = Path(out)
    labels = {int(k): str(v) for k, v in (labels or {}).items()}
    lists = _Lists(data)
    latents_dir = out / "latents"
    if latents_dir.exists():
        shutil.rmtree(latents_dir)
    latents_dir.mkdir(parents=True)
    for i, latent in enumerate(data.latents_F.tolist()):
        record = latent_record(lists, i)
        (latents_dir / f"{latent}.js").write_text(f"SAEDash.register({js_json(record)});\n", encoding="ascii")
    title = title or f"SAE features: {data.meta.get('hook', '')}"
    index = out / "index.html"
    index.write_text(render_index(data, summary_rows(lists, labels), title), encoding="utf-8")
    size = sum(p.stat().st_size for p in latents_dir.iterdir()) + index.stat().st_size
    return DashboardResult(index=index, n_latents=data.latents_F.numel(), megabytes=size / 2**20,
                           seconds=time.perf_counter() - t0)


@dataclass
class DashboardBuild:
    """What `build_dashboard` did."""

    dashboard: DashboardResult
    feature_data: Path
    """The feature-data folder (reused by `--feature-data` to rebuild without recomputing)."""
    n_tokens: int
    seconds_features: float
    """Time of the feature computation (0 when it was read from disk)."""
    neuronpedia: list[Path]


def read_labels(path: str | Path | None) -> dict[int, str]:
    """Labels from a JSON object {"<latent id>": "label", ...}; {} without a path."""
    if not path:
        return {}
    raw = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: labels must be a JSON object mapping latent ids to strings.")
    try:
        return {int(k): str(v) for k, v in raw.items()}
    except ValueError:
        raise ValueError(f"{path}: every key must be a latent id (an integer).") from None


def build_dashboard(out: str | Path, sae_path: str | None = None, model: str | None = None,
                    source: str | None = None, n_tokens: int = 0, latents: str | None = None,
                    cfg: FeatureConfig | None = None, feature_data: str | None = None,
                    labels: str | None = None, neuronpedia: bool = False, device: str = "cpu",
                    progress: bool = True) -> DashboardBuild:
    """Compute feature data (or read it from `feature_data`) and write the dashboard into `out`:
    out/feature-data/, out/index.html, out/latents/ and, with `neuronpedia`, out/neuronpedia/."""
    out = Path(out)
    t0 = time.perf_counter()
    if feature_data:
        data, fd_path, seconds = load_features(feature_data), Path(feature_data), 0.0
    else:
        if not (sae_path and model and source and n_tokens > 0):
            raise ValueError("Give --sae, --model, --data and --tokens to compute feature data, "
                             "or --feature-data DIR to rebuild from a previous run.")
        from ..formats import load
        from ..lm import load_model

        sae = load(sae_path, device=device)
        lm = load_model(model, device=device)
        data = compute_features(sae, lm, source, n_tokens, cfg, latents=latents, progress=progress)
        data.meta["sae"] = str(sae_path)
        fd_path, seconds = save_features(data, out / "feature-data"), time.perf_counter() - t0
    result = write_dashboard(data, out, labels=read_labels(labels))
    pages = []
    if neuronpedia:
        from .neuronpedia import write_neuronpedia

        pages = write_neuronpedia(data, out / "neuronpedia")
    return DashboardBuild(result, fd_path, data.n_tokens, seconds, pages)
