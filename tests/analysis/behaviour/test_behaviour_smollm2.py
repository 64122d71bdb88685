"""The bundled sets on the real SmolLM2 tokenizer and model (slow: loads the model)."""

from __future__ import annotations

import math

import pytest
import torch

from sae.analysis.behaviour.datasets import read_jsonl
from sae.analysis.behaviour.metrics import MetricConfig, encode, score
from tests.analysis.behaviour.test_behaviour_datasets import BUNDLED

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2():
    from sae.lm import ModelLoadError, load_model

    try:
        return load_model("smollm2-135m-instruct")
    except ModelLoadError as err:
        pytest.skip(str(err))


def test_sycophancy_answers_are_single_letter_tokens_after_the_template(smollm2):
    tok = smollm2.tokenizer
    syc = read_jsonl(BUNDLED / "sycophancy_anthropic.jsonl").subset(4)
    enc = encode(syc, tok)
    assert enc.kind == "choice"
    letters = {tok.convert_ids_to_tokens(c[0]) for it in enc.items for c in it.completions}
    assert letters == {"A", "B"}
    for it in enc.items:
        assert tok.decode(it.prompt[-4:]) == "assistant\n("
        assert it.prompt[0] == tok.bos_token_id and it.prompt.count(tok.bos_token_id) >= 2
    with torch.no_grad():
        s = score(lambda t, m: smollm2.bridge(t), enc).summary()
    assert 0.0 <= s["rate"] <= 1.0 and math.isfinite(s["mean_margin"])


def test_deception_margin_is_finite_and_uses_the_scenario(smollm2):
    tok = smollm2.tokenizer
    rp = read_jsonl(BUNDLED / "deception_roleplaying.jsonl").subset(2)
    enc = encode(rp, tok, MetricConfig(max_completion_tokens=8))
    assert enc.kind == "margin"
    text = tok.decode(enc.items[0].prompt)
    assert rp.items[0].system in text and "You are a helpful AI assistant" not in text
    with torch.no_grad():
        s = score(lambda t, m: smollm2.bridge(t), enc).summary()
    assert math.isfinite(s["mean_margin"])
