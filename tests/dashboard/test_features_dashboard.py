"""Feature dashboard files: one row and one lazily loaded file per latent, plotly.js once,
hostile corpus text and labels escaped, a rebuild from saved feature data, Neuronpedia JSON."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from sae.analysis.features import FeatureConfig, compute_features, load_features, save_features
from sae.dashboard.features import ASSETS, write_dashboard
from sae.dashboard.neuronpedia import write_neuronpedia
from sae.model import SparseAutoencoder
from tests._synthetic import centred_sae

HOOK = "blocks.1.hook_resid_post"
D_SAE = 48
HOSTILE = ['<script>window.__xss=1</script>', '"><img src=x onerror="window.__xss=2">',
           "</script><script>window.__xss=3</script>", "<!--", "&amp; \u2028 \\u003c"]


def hostile_corpus(tiny_corpus: Path, folder: Path) -> Path:
    """The tiny corpus with lines of markup injection interleaved."""
    lines = tiny_corpus.read_text(encoding="utf-8").splitlines()
    for k, text in enumerate(HOSTILE[:3]):
        lines.insert(3 + 5 * k, f"An attacker wrote {text} into the page .")
    path = folder / "hostile.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def tiny_sae(model, source: Path) -> SparseAutoencoder:
    return centred_sae(model, source, "topk", d_sae=D_SAE, k=6, seed=3, hook=HOOK)


def build_tiny_dashboard(model, tiny_corpus: Path, folder: Path):
    """Feature data of a tiny SAE over a hostile corpus, with some token strings and labels
    replaced by injection attempts; returns (data, labels, index.html path)."""
    source = hostile_corpus(tiny_corpus, folder)
    cfg = FeatureConfig(n_top=8, context=64, batch=4, per_quantile=2)
    data = compute_features(tiny_sae(model, source), model, str(source), 1500, cfg, progress=False)
    centre = data.top_tokens_FSW[:, 0, cfg.window_left]
    for text, token in zip(HOSTILE, centre[centre >= 0].unique()[: len(HOSTILE)].tolist(), strict=False):
        data.token_strings[int(token)] = text
    labels = {0: HOSTILE[1], 1: HOSTILE[0], 2: "quotes and commas"}
    result = write_dashboard(data, folder / "dash", labels=labels, title="tiny <b>SAE</b>")
    return data, labels, result


@pytest.fixture(scope="module")
def tiny_dashboard(tiny_model, tiny_corpus, tmp_path_factory):
    return build_tiny_dashboard(tiny_model, tiny_corpus, tmp_path_factory.mktemp("dash"))


def _summary(index: str) -> dict:
    body = re.search(r'<script id="summary-data" type="application/json">(.*?)</script>', index, re.S).group(1)
    return json.loads(body)


def test_one_row_and_one_file_per_latent_and_plotly_inlined_once(tiny_dashboard):
    data, _, result = tiny_dashboard
    index = result.index.read_text(encoding="utf-8")
    assert [r[0] for r in _summary(index)["rows"]] == list(range(D_SAE))
    files = sorted(int(p.stem) for p in (result.index.parent / "latents").glob("*.js"))
    assert files == list(range(D_SAE)) and result.n_latents == D_SAE
    assert index.count("plotly.js v") <= 2  # the library banner: plotly.js inlined once
    assert "<script src" not in index and "http://" not in index.split("<script>")[0]
    record = (result.index.parent / "latents" / "5.js").read_text()
    assert record.startswith("SAEDash.register({") and record.isascii()


def test_hostile_strings_never_reach_the_page_as_markup(tiny_dashboard):
    _, _, result = tiny_dashboard
    index = result.index.read_text(encoding="utf-8")
    assert "<b>SAE</b>" not in index and "tiny &lt;b&gt;SAE&lt;/b&gt;" in index
    summary_json = index.split('<script id="summary-data" type="application/json">')[1].split("</script>")[0]
    assert "<" not in summary_json and ">" not in summary_json and "&" not in summary_json
    assert "window.__xss" in summary_json  # the labels are there, as escaped JSON text
    for path in (result.index.parent / "latents").glob("*.js"):
        text = path.read_text()
        assert "<" not in text and ">" not in text
    app = (ASSETS / "features.js").read_text()
    assert app in index
    assert not re.search(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|eval\(", app)


def test_rebuild_from_saved_feature_data_is_identical(tiny_dashboard, tmp_path):
    data, labels, result = tiny_dashboard
    again = write_dashboard(load_features(save_features(data, tmp_path / "fd")), tmp_path / "dash", labels=labels,
                            title="tiny <b>SAE</b>")
    assert again.index.read_text(encoding="utf-8") == result.index.read_text(encoding="utf-8")
    for name in ("0.js", "17.js"):
        first, second = result.index.parent / "latents" / name, tmp_path / "dash" / "latents" / name
        assert second.read_text() == first.read_text()


def test_neuronpedia_export_has_the_documented_fields(tiny_dashboard, tmp_path):
    data, _, _ = tiny_dashboard
    paths = write_neuronpedia(data, tmp_path / "np", model_id="tiny-llama", per_file=20)
    feats = [f for p in paths for f in json.loads(p.read_text(encoding="utf-8"))]
    assert [p.name for p in paths] == ["batch-0.json", "batch-1.json", "batch-2.json"]
    assert [f["index"] for f in feats] == [str(i) for i in range(D_SAE)]
    f = next(f for f in feats if f["frac_nonzero"] > 0)
    assert f["modelId"] == "tiny-llama" and f["layer"] == "1-res-sae-toolkit"
    assert len(f["pos_str"]) == len(f["pos_values"]) == 10 and len(f["topkCosSimIndices"]) == 10
    assert sum(f["freq_hist_data_bar_heights"]) == int(data.count_F[int(f["index"])])
    top = [a for a in f["activations"] if a["binMin"] == -1]
    assert top and top[0]["maxValue"] == pytest.approx(f["maxActApprox"], rel=1e-5)
    assert all(a["values"][a["maxValueTokenIndex"]] == a["maxValue"] for a in top)
    assert len(f["activations"]) > len(top)  # quantile samples follow the top examples
