"""Fixtures for circuit tests: three random TopK SAEs spliced into the tiny Llama, and prompt
pairs that tokenise to equal lengths under the tiny tokenizer."""

from __future__ import annotations

import itertools

import pytest

from sae.analysis.circuits.tasks import PromptPair
from sae.analysis.splice import SplicedModel
from sae.config import SAEConfig
from sae.model import SparseAutoencoder

HOOKS = [f"blocks.{i}.hook_resid_post" for i in range(3)]
WORDS = ["house", "river", "game", "season", "church", "album", "station", "world", "city", "music",
         "army", "family", "school", "road", "ship", "king"]


def tiny_pairs(tokenizer, n: int = 12) -> list[PromptPair]:
    """Pairs "The W1 of the" / "The W2 of the" with the same token count; the answers are two
    fixed token ids (the random model has no preferences, so any two do)."""
    def length(text):
        return len(tokenizer(text, add_special_tokens=False).input_ids)

    pairs = []
    for i, (a, b) in enumerate(itertools.permutations(WORDS, 2)):
        clean, corrupt = f"The {a} of the {WORDS[i % 5]} was", f"The {b} of the {WORDS[i % 5]} was"
        if length(clean) == length(corrupt):
            pairs.append(PromptPair(clean, corrupt, 300 + i % 7, 200 + i % 5))
        if len(pairs) == n:
            break
    return pairs


@pytest.fixture(scope="module")
def spliced(tiny_model):
    saes = {h: SparseAutoencoder(SAEConfig(d_in=tiny_model.d_model, d_sae=40, activation="topk", k=8, hook_name=h),
                                 seed=10 + i) for i, h in enumerate(HOOKS)}
    return SplicedModel(tiny_model, saes)


@pytest.fixture(scope="module")
def pairs(tiny_model):
    return tiny_pairs(tiny_model.tokenizer, 12)
