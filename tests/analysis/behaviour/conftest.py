"""Fixtures of the behaviour tests; the planted construction is described in _planted.py."""

from __future__ import annotations

import pytest

from tests.analysis.behaviour._planted import (
    corpus_lines,
    directions,
    planted_dataset,
    planted_model_dir,
    planted_sae,
)


@pytest.fixture(scope="session")
def planted(tmp_path_factory, tiny_tokenizer):
    """(model, sae, dataset) of the planted behaviour."""
    from sae.lm import load_model

    u, v, rand_FD = directions(64)
    folder = planted_model_dir(tmp_path_factory.mktemp("planted"), tiny_tokenizer, u, v)
    return load_model(str(folder)), planted_sae(u, v, rand_FD), planted_dataset(corpus_lines())
