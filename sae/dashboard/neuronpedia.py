"""Export `FeatureData` as Neuronpedia feature JSON (one object per latent, in batch files).

Neuronpedia stores a feature ("neuron") as a JSON object keyed by `modelId`, `layer` (the SAE's
source id, e.g. `6-res-mysae`) and `index`, with its dashboard data beside it. We fill:
    modelId, layer, index                 identity (index as a string, as Neuronpedia keeps it)
    maxActApprox                          the largest activation seen
    frac_nonzero                          firing frequency
    pos_str, pos_values                   top promoted tokens and their logit effects
    neg_str, neg_values                   top suppressed tokens
    freq_hist_data_bar_heights / _values  the activation histogram (counts, bin centres)
    topkCosSimIndices, topkCosSimValues   nearest latents by decoder cosine
    activations                           examples: tokens, values, maxValue,
                                          maxValueTokenIndex, minValue, binMin, binMax,
                                          binContains (top examples: binMin = binMax = -1;
                                          quantile samples: the interval's bounds, and
                                          binContains = the share of firing tokens in it)
Left out: neuron alignment and correlated-neuron fields, the logit histogram, explanations and
anything Neuronpedia computes itself. See docs/dashboards.md.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..analysis.features import FeatureData, quantile_groups
from .features import round_sig


def _activation(tokens: list[str], values: list[float], centre: int, bounds: tuple[float, float, float]
                ) -> dict[str, Any]:
    lo, hi, share = bounds
    return {"tokens": tokens, "values": values, "maxValue": max(values), "maxValueTokenIndex": centre,
            "minValue": min(values), "binMin": lo, "binMax": hi, "binContains": share}


def _examples(data: FeatureData, i: int, prefix: str, slots: range, bounds: tuple[float, float, float]
              ) -> list[dict[str, Any]]:
    val, row = getattr(data, f"{prefix}_val_FS")[i], getattr(data, f"{prefix}_row_FS")[i]
    toks, acts = getattr(data, f"{prefix}_tokens_FSW")[i], getattr(data, f"{prefix}_acts_FSW")[i]
    centre = int(data.meta["config"]["window_left"])
    out = []
    for s in slots:
        if int(row[s]) < 0 or float(val[s]) <= 0:
            continue
        ids = toks[s].tolist()
        keep = [j for j, t in enumerate(ids) if t >= 0]
        lo, hi = keep[0], keep[-1] + 1
        strings = [data.token_strings.get(t, f"<{t}>") for t in ids[lo:hi]]
        out.append(_activation(strings, round_sig(acts[s, lo:hi], 5), centre - lo, bounds))
    return out


def feature_json(data: FeatureData, i: int, model_id: str, source_id: str) -> dict[str, Any]:
    """Neuronpedia's feature object for row `i` of `data`."""
    edges = data.hist_edges_H1
    counts = data.hist_FH[i]
    nz = counts.nonzero().squeeze(1)
    lo, hi = (int(nz[0]), int(nz[-1]) + 1) if nz.numel() else (0, 0)
    centres = (edges[lo:hi] * edges[lo + 1:hi + 1]).sqrt()
    S = data.top_val_FS.shape[1]
    acts = _examples(data, i, "top", range(S), (-1.0, -1.0, -1.0))
    n_q = int(data.meta["config"]["n_quantiles"])
    vals = data.sample_val_FS[i]
    for a, b in quantile_groups(vals, n_q):
        acts += _examples(data, i, "sample", range(a, b), (float(vals[b - 1]), float(vals[a]), 1.0 / n_q))
    name = lambda t: data.token_strings.get(int(t), f"<{int(t)}>")  # noqa: E731
    return {
        "modelId": model_id, "layer": source_id, "index": str(int(data.latents_F[i])),
        "maxActApprox": float(data.max_F[i]), "frac_nonzero": float(data.freq_F[i]),
        "pos_str": [name(t) for t in data.logit_pos_ids_FL[i]], "pos_values": data.logit_pos_FL[i].tolist(),
        "neg_str": [name(t) for t in data.logit_neg_ids_FL[i]], "neg_values": data.logit_neg_FL[i].tolist(),
        "freq_hist_data_bar_heights": counts[lo:hi].tolist(), "freq_hist_data_bar_values": centres.tolist(),
        "topkCosSimIndices": data.neighbour_ids_FN[i].tolist(), "topkCosSimValues": data.neighbour_cos_FN[i].tolist(),
        "activations": acts,
    }


def default_source_id(data: FeatureData) -> str:
    """`<layer>-res-sae-toolkit` from a hook like blocks.6.hook_resid_post (else the hook name)."""
    hook = str(data.meta.get("hook", ""))
    parts = hook.split(".")
    if len(parts) > 2 and parts[0] == "blocks" and parts[1].isdigit():
        kind = {"hook_resid_post": "res", "hook_resid_pre": "res-pre", "hook_mlp_out": "mlp",
                "hook_attn_out": "att"}.get(parts[-1], parts[-1])
        return f"{parts[1]}-{kind}-sae-toolkit"
    return hook or "sae-toolkit"


def write_neuronpedia(data: FeatureData, folder: str | Path, model_id: str | None = None,
                      source_id: str | None = None, per_file: int = 256) -> list[Path]:
    """Write `batch-<k>.json` files (a JSON list of feature objects each) into `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model_id = model_id or str(data.meta.get("model", "model"))
    source_id = source_id or default_source_id(data)
    paths = []
    n = data.latents_F.numel()
    for k, start in enumerate(range(0, n, per_file)):
        feats = [feature_json(data, i, model_id, source_id) for i in range(start, min(n, start + per_file))]
        path = folder / f"batch-{k}.json"
        path.write_text(json.dumps(feats, ensure_ascii=False, allow_nan=False), encoding="utf-8")
        paths.append(path)
    return paths

