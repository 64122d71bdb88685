"""The behaviour page: one offline HTML file from a behaviour report (`BehaviourReport.to_dict(
per_latent=True)`, or the behaviour.json the CLI writes), so it rebuilds without a model.

Sections: the clean-model metric and the probe baselines; the reported latents (train AUROC,
held-out AUROC, Cohen's d, BH q, attribution, label), each linked to its page in the feature
dashboard (`../features/index.html#latent-<id>` by default, the anchor sae.dashboard.features
routes on); held-out activation distributions on the behaviour and control sides; AUROC against
attribution for every latent; steering dose-response with its CE cost; the removal trade-off.
plotly.js is inlined once. Every string from data, labels or the model is html-escaped before it
reaches the page or a figure.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

FEATURES_HREF = "../features/index.html#latent-{id}"


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _num(value: Any, digits: int = 3) -> str:
    if isinstance(value, bool) or value is None:
        return _e(value)
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return _e(value)


def _layout(fig: Any, title: str, x: str, y: str) -> Any:
    fig.update_layout(title=_e(title), xaxis_title=_e(x), yaxis_title=_e(y), height=360,
                      margin=dict(l=55, r=20, t=45, b=80), legend=dict(orientation="h", y=-0.3))
    return fig


def distribution_figures(report: dict[str, Any]) -> list[Any]:
    """Overlaid histograms of each reported latent on the held-out behaviour / control sides."""
    import plotly.graph_objects as go

    figs = []
    rows = {r["latent"]: r for r in report["top_latents"]}
    for key, dist in report.get("distributions", {}).items():
        row = rows.get(int(key), {})
        fig = go.Figure()
        for side, color in (("behaviour", "#d62728"), ("control", "#1f77b4")):
            fig.add_trace(go.Histogram(x=dist[side], name=side, opacity=0.6, marker_color=color, nbinsx=30))
        fig.update_layout(barmode="overlay")
        title = f"latent {key}: held-out AUROC {_num(row.get('test_auroc'))}"
        figs.append(_layout(fig, title, "pooled activation", "sides"))
    return figs


def auroc_attribution_figure(report: dict[str, Any]) -> Any | None:
    """Train AUROC against attribution for every latent; reported latents marked."""
    import plotly.graph_objects as go

    per = report.get("per_latent") or {}
    if not per or per.get("attribution") is None:
        return None
    top = {r["latent"] for r in report["top_latents"]}
    ids = list(range(len(per["auroc"])))
    fig = go.Figure(go.Scatter(x=per["attribution"], y=per["auroc"], mode="markers",
                               text=[f"latent {i}" for i in ids],
                               marker=dict(size=[9 if i in top else 4 for i in ids],
                                           color=["#d62728" if i in top else "#999" for i in ids])))
    return _layout(fig, "every latent: AUROC (train) vs attribution", "gradient x activation", "AUROC")


def steering_figure(report: dict[str, Any]) -> Any | None:
    """Behaviour and CE cost against steering strength, a line per latent."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    curves = report.get("steering") or []
    if not curves:
        return None
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    for c in curves:
        fig.add_trace(go.Scatter(x=c["scales"], y=c["behaviour"], mode="lines+markers",
                                 name=_e(f"latent {c['latent']} behaviour")), secondary_y=False)
        fig.add_trace(go.Scatter(x=c["scales"], y=c["ce_delta"], mode="lines", line=dict(dash="dot"),
                                 name=_e(f"latent {c['latent']} CE cost")), secondary_y=True)
    fig.update_yaxes(title_text="CE change (nats)", secondary_y=True)
    mode = curves[0]["mode"]
    return _layout(fig, f"steering ({mode} s x typical activation)", "strength s", "behaviour (mean metric)")


def removal_figure(report: dict[str, Any]) -> Any | None:
    """Greedy removal: behaviour against CE cost after each removed latent."""
    import plotly.graph_objects as go

    rem = report.get("removal")
    if not rem or not rem["curve"]:
        return None
    xs = [p["ce_delta"] for p in rem["curve"]]
    names = [_e(", ".join(map(str, p["latents"])) or "none") for p in rem["curve"]]
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=xs, y=[p["behaviour"] for p in rem["curve"]], mode="lines+markers+text",
                             text=names, textposition="top center", name="selection (train)"))
    if rem["curve"][0].get("behaviour_test") is not None:
        fig.add_trace(go.Scatter(x=xs, y=[p["behaviour_test"] for p in rem["curve"]], mode="lines+markers",
                                 name="held-out"))
    return _layout(fig, "removal trade-off (greedy, zero ablation)", "CE change on ordinary text (nats)",
                   "behaviour")


def probe_figure(report: dict[str, Any]) -> Any:
    """Held-out AUROC of the dense probe, the sparse probes and the best latent."""
    import plotly.graph_objects as go

    p = report["probes"]
    names = ["dense probe"] + [f"sparse top-{k}" for k in p["sparse_probe_auroc"]] + [f"latent {p['best_latent']}"]
    vals = [p["dense_probe_auroc"], *p["sparse_probe_auroc"].values(), p["best_latent_auroc"]]
    fig = go.Figure(go.Bar(x=[_e(n) for n in names], y=vals))
    fig.update_yaxes(range=[0, 1])
    return _layout(fig, "held-out AUROC", "", "AUROC")


def _table(rows: list[list[str]], head: list[str]) -> str:
    th = "".join(f"<th>{_e(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{th}</tr>{body}</table>"


def _summary_html(report: dict[str, Any]) -> str:
    meta = report["meta"]
    kv = [[_e(k), _num(v)] for k, v in meta.items()]
    kv += [[_e(f"clean {k}"), _num(v)] for k, v in report.get("clean", {}).items()]
    kv += [[_e("ranking test"), _e(report["ranking"]["test"])],
           [_e(f"latents significant at FDR {report['ranking']['fdr']}"), _num(report["ranking"]["n_significant"])]]
    p = report["probes"]
    kv += [[_e("dense probe AUROC (held-out)"), _num(p["dense_probe_auroc"])]]
    kv += [[_e(f"sparse probe top-{k} AUROC"), _num(v)] for k, v in p["sparse_probe_auroc"].items()]
    return _table(kv, ["quantity", "value"])


def _latents_html(report: dict[str, Any], features_href: str) -> str:
    rows = []
    for r in report["top_latents"]:
        lat = int(r["latent"])
        link = f"<a href='{_e(features_href.format(id=lat))}' id='latent-{lat}'>{lat}</a>"
        rows.append([link, _num(r["auroc"]), _num(r.get("test_auroc")), _num(r["cohen_d"]), _num(r["q"]),
                     _num(r.get("attribution")), _e(r["label"])])
    return _table(rows, ["latent", "AUROC (train)", "AUROC (held-out)", "Cohen's d", "BH q", "attribution", "label"])


def _contexts_html(report: dict[str, Any]) -> str:
    parts = []
    for lab in report.get("labels", []):
        items = "".join(f"<li><code>{_e(c)}</code> ({_num(a)})</li>"
                        for c, a in zip(lab["contexts"], lab["context_acts"], strict=False))
        parts.append(f"<details><summary>latent {int(lab['latent'])}: {_e(lab['label'])}</summary>"
                     f"<p>suppresses: {_e(', '.join(map(repr, lab['suppressed'])))}</p><ul>{items}</ul></details>")
    return "".join(parts)


def render_behaviour_page(report: dict[str, Any], features_href: str = FEATURES_HREF) -> str:
    """The page as one HTML string (see the module docstring)."""
    from plotly.offline import get_plotlyjs

    figs = [f for f in (probe_figure(report), steering_figure(report), removal_figure(report),
                        auroc_attribution_figure(report)) if f is not None]
    figs += distribution_figures(report)
    divs = "".join(f.to_html(full_html=False, include_plotlyjs=False) for f in figs)
    title = f"Behaviour: {report['meta']['dataset']} at {report['meta']['hook']}"
    return ("<!DOCTYPE html><html><head><meta charset='utf-8'>"
            f"<title>{_e(title)}</title><style>body{{font-family:sans-serif;margin:20px}}"
            ".grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(520px,1fr));gap:10px}"
            "table{border-collapse:collapse;margin-bottom:16px}th,td{border:1px solid #ccc;padding:3px 8px;"
            "text-align:left;vertical-align:top}</style>"
            f"<script>{get_plotlyjs()}</script></head><body><h1>{_e(title)}</h1>"
            f"<h2>Clean model and baselines</h2>{_summary_html(report)}"
            f"<h2>Latents</h2>{_latents_html(report, features_href)}{_contexts_html(report)}"
            f"<div class='grid'>{divs}</div></body></html>")


def write_behaviour_page(report: dict[str, Any] | str | Path, out: str | Path,
                         features_href: str = FEATURES_HREF) -> Path:
    """Write the page to `out` (a .html file, or a folder that gets index.html) from a report
    dict or a behaviour.json path."""
    if isinstance(report, (str, Path)):
        report = json.loads(Path(report).read_text(encoding="utf-8"))
    out = Path(out)
    if out.suffix != ".html":
        out = out / "index.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".tmp-{out.name}")
    tmp.write_text(render_behaviour_page(report, features_href), encoding="utf-8")
    tmp.replace(out)
    return out
