"""The circuit page: an interactive Plotly graph of a `Circuit`, as one offline HTML file.

Columns left to right: token embeddings, each spliced hook in order, the metric. Within a column,
nodes are sorted by attribution. Node area grows with |effect| (the measured patching effect
where it was checked, else |attribution|); blue raises the metric, red lowers it. Edge width
grows with |edge attribution|, same colours. Hovering shows the latent's label, top promoted
tokens, attribution and effect; clicking a latent opens its page in the feature dashboard
(`features/<hook>/index.html#latent-<id>` by default, the scheme of `sae.dashboard.features`).
plotly.js is inlined once; every string from the tokenizer or labels is html-escaped.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

from ..analysis.circuits.attribution import ERROR
from ..analysis.circuits.graph import Circuit, CircuitNode

LINK_TEMPLATE = "features/{hook}/index.html#latent-{latent}"
POS, NEG = "#2166ac", "#b2182b"


def _positions(circuit: Circuit) -> dict[tuple[str, int], tuple[float, float]]:
    cols: dict[int, list[CircuitNode]] = {}
    for node in circuit.nodes:
        cols.setdefault(node.layer, []).append(node)
    pos = {}
    for layer, nodes in cols.items():
        nodes.sort(key=lambda n: -n.score)
        for k, node in enumerate(nodes):
            pos[node.key] = (float(layer), (len(nodes) - 1) / 2 - k)
    return pos


def _hover(node: CircuitNode) -> str:
    parts = [f"<b>{html.escape(node.label)}</b>", f"hook: {html.escape(node.hook)}"]
    if node.latent != ERROR and node.top_tokens:
        parts.append("promotes: " + html.escape(", ".join(repr(t) for t in node.top_tokens)))
    parts.append(f"attribution: {node.score:+.4g}")
    if node.effect is not None:
        parts.append(f"patching effect: {node.effect:+.4g}")
    return "<br>".join(parts)


def _size(node: CircuitNode, scale: float) -> float:
    value = abs(node.effect) if node.effect is not None else abs(node.score)
    return 8 + 30 * math.sqrt(value / scale) if scale > 0 else 8


def _is_latent(node: CircuitNode, hooks: list[str]) -> bool:
    return node.hook in hooks and node.latent != ERROR


def circuit_figure(circuit: Circuit, link_template: str = LINK_TEMPLATE):
    """The plotly Figure (edges as lines, nodes as markers carrying their link in customdata)."""
    import plotly.graph_objects as go

    pos = _positions(circuit)
    fig = go.Figure()
    e_scale = max((abs(e.score) for e in circuit.edges), default=1.0) or 1.0
    for e in circuit.edges:
        if e.up not in pos or e.down not in pos:
            continue
        (x0, y0), (x1, y1) = pos[e.up], pos[e.down]
        fig.add_trace(go.Scatter(x=[x0, x1], y=[y0, y1], mode="lines", hoverinfo="skip", showlegend=False,
                                 line={"width": 0.5 + 8 * abs(e.score) / e_scale, "color": POS if e.score > 0 else NEG},
                                 opacity=0.55))
    nodes = circuit.nodes
    n_scale = max((abs(n.effect if n.effect is not None else n.score) for n in nodes if n.hook in circuit.hooks),
                  default=1.0)
    links = [link_template.format(hook=n.hook, latent=n.latent) if _is_latent(n, circuit.hooks) else "" for n in nodes]
    fig.add_trace(go.Scatter(
        x=[pos[n.key][0] for n in nodes], y=[pos[n.key][1] for n in nodes], mode="markers+text",
        text=[html.escape(_short(n)) for n in nodes], textposition="top center", textfont={"size": 9},
        marker={"size": [_size(n, n_scale) for n in nodes], "color": [POS if n.score >= 0 else NEG for n in nodes],
                "symbol": ["square" if n.latent == ERROR else "circle" for n in nodes], "line": {"width": 1}},
        hovertext=[_hover(n) for n in nodes], hoverinfo="text", customdata=links, showlegend=False))
    ticks = ["embeddings", *circuit.hooks, "metric"]
    fig.update_layout(
        title=html.escape(f"Circuit: {len(circuit.nodes) - 2} nodes, {len(circuit.edges)} edges, "
                          f"metric clean {circuit.metric_clean:.3g} / corrupted {circuit.metric_corrupt:.3g}"),
        xaxis={"tickvals": list(range(len(ticks))), "ticktext": [html.escape(t) for t in ticks], "zeroline": False},
        yaxis={"visible": False}, plot_bgcolor="white", height=max(500, 28 * max(_column_sizes(circuit))),
        hoverlabel={"align": "left"})
    return fig


def _short(node: CircuitNode) -> str:
    if node.hook in ("hook_embed", "metric"):
        return node.label
    return "err" if node.latent == ERROR else f"#{node.latent}"


def _column_sizes(circuit: Circuit) -> list[int]:
    counts: dict[int, int] = {}
    for n in circuit.nodes:
        counts[n.layer] = counts.get(n.layer, 0) + 1
    return list(counts.values())


_CLICK_JS = """
var plot = document.getElementById('{plot_id}');
plot.on('plotly_click', function (ev) {
  var url = ev.points[0].customdata;
  if (url) { window.location.href = url; }
});
"""


def write_circuit_page(circuit: Circuit, path: str | Path, link_template: str = LINK_TEMPLATE) -> Path:
    """Write the graph, a summary table of the checks, and the faithfulness curve as one HTML file."""
    import plotly.io as pio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    graph = pio.to_html(circuit_figure(circuit, link_template), include_plotlyjs=True, full_html=False,
                        post_script=_CLICK_JS, div_id="circuit-graph")
    parts = [graph]
    if circuit.curve is not None:
        parts.append(pio.to_html(curve_figure(circuit), include_plotlyjs=False, full_html=False))
    rows = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(_fmt(v))}</td></tr>"
                   for k, v in circuit.summary().items() if not isinstance(v, dict))
    page = ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>Circuit</title>"
            "<style>body{font-family:sans-serif;margin:1em}td{padding:2px 8px}</style></head><body>"
            f"<h1>Circuit</h1><table>{rows}</table>{''.join(parts)}</body></html>")
    path.write_text(page, encoding="utf-8")
    return path


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else json.dumps(v) if isinstance(v, (list, dict)) else str(v)


def curve_figure(circuit: Circuit):
    """Faithfulness and completeness against the number of nodes (log x where sizes allow)."""
    import plotly.graph_objects as go

    c = circuit.curve
    fig = go.Figure()
    x = [max(n, 0.5) for n in c.sizes]  # size 0 drawn at 0.5 on the log axis
    fig.add_trace(go.Scatter(x=x, y=c.faithfulness, mode="lines+markers", name="faithfulness F(C)"))
    fig.add_trace(go.Scatter(x=x, y=c.completeness, mode="lines+markers", name="completeness F(M\\C)"))
    fig.add_hline(y=0.8, line_dash="dot", line_color="grey")
    fig.update_layout(title=html.escape(f"Faithfulness and completeness ({c.ablation} ablation)"),
                      xaxis={"type": "log", "title": "nodes in the circuit (top by |attribution|)"},
                      yaxis={"title": "normalised metric"}, height=420)
    return fig
