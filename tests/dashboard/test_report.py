"""report.html: offline (plotly.js inlined once), one figure per curve, density histogram, escaped text."""

from __future__ import annotations

import json

from sae.dashboard.report import write_report


def test_report_is_offline_and_has_every_curve(tmp_path):
    rows = [{"step": s, "tokens": 4096 * s, "loss": 1.0 / s, "fvu": 0.5 / s, "l0": 32.0, "dead_frac": 0.01,
             "lr": 1e-4, "aux": 0.3, "sparsity": 0.0} for s in range(1, 21)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "density.blocks.6.hook_resid_post.json").write_text(json.dumps({"density": [0.0, 0.01, 0.2, 1e-4],
                                                                                "n_rows": 100}))
    (tmp_path / "result.json").write_text(json.dumps({"note": "<script>alert(1)</script>"}))
    html = write_report(tmp_path).read_text()
    assert html.count("Plotly.newPlot") == 7  # 6 curves (sparsity never active: left out) + density
    assert "<script src" not in html and "<link" not in html  # nothing fetched: plotly.js is inline
    assert html.count("plotly.js v") <= 2  # the library's banner appears once, inlined
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;" in html
    assert "1 of 4 latents never fired" in html
