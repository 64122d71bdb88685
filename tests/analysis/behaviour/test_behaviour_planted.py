"""The pipeline recovers a planted behaviour latent (see conftest.py for the construction)."""

from __future__ import annotations

import pytest
import torch

from sae.analysis.behaviour.causal import CausalConfig, edited_logits
from sae.analysis.behaviour.metrics import encode, metric_values
from sae.analysis.behaviour.report import BehaviourConfig, run_behaviour
from sae.analysis.labels import LabelConfig
from sae.analysis.splice import SplicedModel, set_latents
from tests.analysis.behaviour._planted import DISTRACTOR, HOOK, PLANTED

SCALES = (-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0)


@pytest.fixture(scope="module")
def report(planted):
    model, sae, data = planted
    cfg = BehaviourConfig(n_top=5, causal=CausalConfig(scales=SCALES, n_steer=2, ce_tokens=1024),
                          labels=LabelConfig(corpus_tokens=2048))
    return run_behaviour(model, sae, data, cfg)


def test_clean_model_shows_the_behaviour(report):
    assert report.meta["kind"] == "choice"
    assert report.clean["rate"] == 1.0
    assert report.clean["mean_margin"] > 1.5


def test_planted_latent_ranks_first_and_the_distractor_is_caught(report):
    r = report.ranking
    assert int(r.order[0]) == PLANTED
    assert bool(r.significant_F[PLANTED]) and float(r.q_F[PLANTED]) < 1e-3
    # the distractor separates the two sides just as well...
    assert float(r.auroc_F[DISTRACTOR]) == 1.0 and DISTRACTOR in r.order[:3].tolist()
    # ...but attribution sees that only the planted latent drives the answer
    assert int(r.by_attribution()[0]) == PLANTED
    assert abs(float(r.attribution_F[DISTRACTOR])) < 0.05 * float(r.attribution_F[PLANTED])
    assert report.probes["best_latent"] == PLANTED and report.probes["best_latent_auroc"] == 1.0
    assert report.probes["dense_probe_auroc"] > 0.95


def test_steering_is_monotonic_and_specific(report):
    planted, distractor = report.steering
    assert planted.latent == PLANTED and distractor.latent == DISTRACTOR
    assert planted.is_monotonic()
    assert abs(planted.unit - 0.3) < 0.06  # u: the planted shift S of the answer token
    assert planted.behaviour[0] < -1.0 and planted.behaviour[-1] > 3.0
    span = max(planted.behaviour) - min(planted.behaviour)
    # the distractor only rescales the final norm (its direction has no path to the answer)
    assert max(distractor.behaviour) - min(distractor.behaviour) < 0.25 * span
    assert all(b > 0 for b in distractor.behaviour)


def test_removal_removes_the_behaviour(report):
    rem = report.removal
    assert rem.chosen[0] == PLANTED
    after = rem.curve[1]
    assert after.latents == [PLANTED] and abs(after.behaviour_test) < 0.1 * rem.base_behaviour_test
    # later steps can only trim what is left
    assert abs(rem.curve[-1].behaviour_test) < 0.1 * rem.base_behaviour_test
    alone = {p.latents[0]: p for p in rem.single}
    assert abs(alone[DISTRACTOR].behaviour - rem.base_behaviour) < 0.02 * rem.base_behaviour
    assert abs(rem.curve[-1].ce_delta) < 0.05


def test_attribution_predicts_the_ablation(planted, report):
    model, sae, data = planted
    enc = encode(data, model.tokenizer)
    spliced = SplicedModel(model, {HOOK: sae})
    clean = metric_values(edited_logits(spliced, HOOK), enc).mean()
    ablated = metric_values(edited_logits(spliced, HOOK, set_latents([PLANTED])), enc).mean()
    drop, predicted = float(clean - ablated), float(report.ranking.attribution_F[PLANTED])
    assert drop > 2.0 and 0.5 * drop < predicted < 1.5 * drop


def test_labels_name_the_promoted_answer(report):
    top = report.labels[0]
    assert top["latent"] == PLANTED and top["promoted"][0] == "A"
    assert "planted+" in top["label"] and top["contexts"]
    assert report.to_dict()["top_latents"][0]["label"] == top["label"]


def test_swapped_sides_flip_every_sign(planted):
    from sae.analysis.behaviour.datasets import BehaviourDataset, BehaviourItem

    model, sae, data = planted
    swapped = BehaviourDataset("swapped", [BehaviourItem(id=it.id, prompt=it.prompt, matching="B",
                                                         not_matching="A", chat=False) for it in data.items])
    rep = run_behaviour(model, sae, swapped, BehaviourConfig(
        n_top=3, probe_ks=(1,), causal=CausalConfig(n_steer=0, removal_steps=0, ce_tokens=0),
        labels=LabelConfig(corpus_tokens=0)))
    assert rep.clean["rate"] == 0.0
    assert int(rep.ranking.order[0]) == PLANTED and float(rep.ranking.auroc_F[PLANTED]) == 0.0
    assert int(rep.ranking.attribution_F.argmin()) == PLANTED
    assert torch.isfinite(rep.ranking.p_F).all()
