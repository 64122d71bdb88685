"""report.html for a training run: Plotly curves of loss, FVU, L0, dead fraction and learning
rate against tokens, and the feature-density histogram of each SAE on held-out activations.

The page works offline: plotly.js is embedded once and each figure is a div that uses it.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

CURVES = ("loss", "fvu", "l0", "dead_frac", "lr", "aux", "sparsity")


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The rows of a metrics.jsonl file."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _series(rows: list[dict[str, Any]]) -> dict[str, dict[str, list[float]]]:
    """curve -> sae prefix -> values, aligned with the tokens column."""
    out: dict[str, dict[str, list[float]]] = {}
    for key in rows[0]:
        name = key.rsplit("/", 1)
        curve, sae = (name[1], name[0]) if len(name) == 2 else (name[0], "")
        if curve in CURVES:
            out.setdefault(curve, {})[sae] = [r.get(key) for r in rows]
    return out


def curve_figures(rows: list[dict[str, Any]]) -> list[Any]:
    """One Plotly figure per metric, a line per SAE, tokens on the x axis."""
    import plotly.graph_objects as go

    tokens = [r["tokens"] for r in rows]
    figs = []
    for curve, per_sae in _series(rows).items():
        if curve in ("aux", "sparsity") and not any(v for vs in per_sae.values() for v in vs):
            continue  # the term was never active (e.g. TopK without dead latents): nothing to plot
        fig = go.Figure()
        for sae, values in per_sae.items():
            fig.add_trace(go.Scatter(x=tokens, y=values, mode="lines", name=sae or curve))
        log_y = curve in ("loss", "fvu", "aux") and all(v and v > 0 for vs in per_sae.values() for v in vs)
        fig.update_layout(title=curve, xaxis_title="training tokens", yaxis_type="log" if log_y else None,
                          height=320, margin=dict(l=50, r=20, t=40, b=40))
        figs.append(fig)
    return figs


def density_figure(name: str, density: list[float]) -> Any:
    """Histogram of log10 firing density; dead latents counted separately in the title."""
    import math

    import plotly.graph_objects as go

    alive = [math.log10(d) for d in density if d > 0]
    dead = len(density) - len(alive)
    fig = go.Figure(go.Histogram(x=alive, nbinsx=60))
    fig.update_layout(title=f"feature density: {name} ({dead} of {len(density)} latents never fired)",
                      xaxis_title="log10 firing frequency", yaxis_title="latents", height=320,
                      margin=dict(l=50, r=20, t=40, b=40))
    return fig


_CARDS = (("l0", "L0"), ("fvu", "FVU (held out)"), ("dead_frac", "dead latents"),
          ("ce_loss_recovered", "CE loss recovered"), ("kl", "KL, nats/token"))


def _cards(summary: dict[str, Any]) -> str:
    """Headline numbers: training-holdout ones first, then the spliced eval's (eval*.json)."""
    flat = dict(summary)
    for key, value in summary.items():
        if key.startswith("eval") and isinstance(value, dict):
            flat.update({k: v for k, v in value.items() if k in ("ce_loss_recovered", "kl")})
    cards = []
    for key, label in _CARDS:
        if isinstance(flat.get(key), (int, float)):
            value = flat[key]
            text = f"{100 * value:.2f}%" if key == "dead_frac" else f"{value:.4g}"
            cards.append(f"<div class='card'><div class='lbl'>{html.escape(label)}</div>"
                         f"<div class='val'>{html.escape(text)}</div></div>")
    return f"<div class='cards'>{''.join(cards)}</div>" if cards else ""


def render_page(title: str, figures: list[Any], summary: dict[str, Any] | None = None) -> str:
    """A self-contained HTML page with plotly.js inlined once: headline numbers, the figures,
    then every number of the run in a table."""
    from plotly.offline import get_plotlyjs

    divs = [fig.to_html(full_html=False, include_plotlyjs=False) for fig in figures]
    details = f"<h2>Details</h2><table>{_rows(summary)}</table>" if summary else ""
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title>"
        "<style>body{font-family:system-ui,sans-serif;margin:24px;color:#222}"
        ".grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(520px,1fr));gap:10px}"
        ".cards{display:flex;gap:12px;margin:12px 0 20px}"
        ".card{border:1px solid #ddd;border-radius:6px;padding:8px 14px;min-width:120px}"
        ".lbl{font-size:12px;color:#666;text-transform:uppercase}.val{font-size:20px;font-weight:600}"
        "table{border-collapse:collapse;font-size:13px} th,td{border:1px solid #ddd;padding:3px 8px;"
        "text-align:left;vertical-align:top}</style>"
        f"<script>{get_plotlyjs()}</script></head><body>"
        f"<h1>{html.escape(title)}</h1>{_cards(summary or {})}<div class='grid'>{''.join(divs)}</div>"
        f"{details}</body></html>"
    )


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return value if isinstance(value, str) else json.dumps(value)


def _rows(summary: dict[str, Any]) -> str:
    """Table rows; a nested dict becomes a nested table."""
    out = []
    for key, value in summary.items():
        cell = f"<table>{_rows(value)}</table>" if isinstance(value, dict) else html.escape(_fmt(value))
        out.append(f"<tr><th>{html.escape(str(key))}</th><td>{cell}</td></tr>")
    return "".join(out)


def write_report(run_dir: str | Path) -> Path:
    """Write run_dir/report.html from metrics.jsonl, density.*.json and result.json."""
    run_dir = Path(run_dir)
    metrics = run_dir / "metrics.jsonl"
    if not metrics.is_file():
        raise FileNotFoundError(f"{run_dir} has no metrics.jsonl; is it a training run folder?")
    rows = read_metrics(metrics)
    figures = curve_figures(rows) if rows else []
    for path in sorted(run_dir.glob("density.*.json")):
        data = json.loads(path.read_text())
        figures.append(density_figure(path.stem.removeprefix("density."), data["density"]))
    summary: dict[str, Any] = {}
    if (run_dir / "result.json").is_file():
        summary.update(json.loads((run_dir / "result.json").read_text()))
    for path in sorted(run_dir.glob("eval*.json")):  # written by `sae eval ... --json > eval.json`
        summary[path.stem] = json.loads(path.read_text())
    out = run_dir / "report.html"
    tmp = out.with_name(".tmp-report.html")
    tmp.write_text(render_page(f"SAE training run: {run_dir.name}", figures, summary), encoding="utf-8")
    tmp.replace(out)
    return out
