"""The behaviour JSONL schema, the bundled copies and the loaders of the shared sets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sae.analysis.behaviour.datasets import (
    BehaviourDataError,
    BehaviourDataset,
    BehaviourItem,
    from_refusal,
    load_behaviour,
    read_jsonl,
    write_jsonl,
)

BUNDLED = Path(__file__).resolve().parents[3] / "data" / "behaviour"
SHARED = Path(__file__).resolve().parents[4] / "shared" / "data"  # beside the checkout, where present


def test_bundled_sets_load_in_the_schema():
    syc = read_jsonl(BUNDLED / "sycophancy_anthropic.jsonl")
    assert len(syc) == 643 and syc.is_pair and syc.metric == "margin"
    assert {it.matching for it in syc.items} == {"A", "B"} and all(it.assistant_prefix == "(" for it in syc.items)
    assert all(it.matching != it.not_matching for it in syc.items)
    # matching answers are close to balanced between the letters, so letter identity is no confound
    assert 0.4 < sum(it.matching == "A" for it in syc.items) / len(syc) < 0.6
    rp = read_jsonl(BUNDLED / "deception_roleplaying.jsonl")
    assert len(rp) == 300 and rp.is_pair and all(it.system for it in rp.items)
    assert not any(it.not_matching.startswith('"') or it.matching.startswith('"') for it in rp.items)
    facts = read_jsonl(BUNDLED / "truth_facts.jsonl")
    assert len(facts) == 612 and not facts.is_pair and {it.label for it in facts.items} == {0, 1}
    assert not any(it.chat for it in facts.items)


def test_roundtrip_and_split(tmp_path):
    items = [BehaviourItem(id=f"p{i}", prompt=f"q{i}", label=i % 2, metric="refusal") for i in range(10)]
    ds = BehaviourDataset("refusal", items)
    back = read_jsonl(write_jsonl(ds, tmp_path / "r.jsonl"))
    assert [it.to_record() for it in back.items] == [it.to_record() for it in items]
    train, test = back.split(0.4, seed=3)
    assert {it.id for it in train.items}.isdisjoint({it.id for it in test.items})
    assert len(train) + len(test) == 10 and sorted(it.label for it in test.items) == [0, 0, 1, 1]
    assert [it.id for it in back.split(0.4, seed=3)[1].items] == [it.id for it in test.items]


@pytest.mark.parametrize("line, message", [
    ('{"prompt": "x", "matching": "a"}', "needs both"),
    ('{"prompt": "x"}', "label"),
    ('{"prompt": "x", "label": 1, "answer": "y"}', "unknown field"),
    ('{"matching": "a", "not_matching": "b"}', "prompt"),
    ('{"prompt": "x", "label": 1, "metric": "logit"}', "metric must be one of"),
    ("not json", "not valid JSON"),
])
def test_schema_errors_name_the_line_and_the_fix(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "ok", "matching": "a", "not_matching": "b"}\n' + line + "\n")
    with pytest.raises(BehaviourDataError, match=message) as err:
        read_jsonl(path)
    assert "line 2" in str(err.value)


def test_a_file_keeps_one_form_and_both_labels(tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_text('{"prompt": "a", "matching": "x", "not_matching": "y"}\n{"prompt": "b", "label": 1}\n')
    with pytest.raises(BehaviourDataError, match="mixes record forms"):
        read_jsonl(path)
    path.write_text('{"prompt": "a", "label": 1}\n{"prompt": "b", "label": 1}\n')
    with pytest.raises(BehaviourDataError, match="only one label"):
        read_jsonl(path)


@pytest.mark.skipif(not SHARED.is_dir(), reason="needs ../shared/data")
def test_shared_formats_are_told_by_content():
    syc = load_behaviour(SHARED / "sycophancy" / "generate_dataset.json")
    assert len(syc) == 643 and syc.items[0].prompt.startswith("Hello, my name is")
    assert len(load_behaviour(SHARED / "deception" / "roleplaying_raw_first300.json")) == 300
    truth = load_behaviour(SHARED / "deception" / "geometry_of_truth" / "cities.csv")
    assert len(truth) == 1496 and not truth.is_pair
    ref = from_refusal(SHARED / "refusal" / "harmful_val.json", SHARED / "refusal" / "harmless_val.json")
    assert sum(it.label for it in ref.items) == 39 and len(ref) == 78 and ref.metric == "refusal"
    with pytest.raises(BehaviourDataError, match="from_refusal"):
        load_behaviour(SHARED / "refusal" / "harmful_val.json")


def test_bundled_copies_equal_the_shared_sources():
    if not SHARED.is_dir():
        pytest.skip("needs ../shared/data")
    from sae.analysis.behaviour.datasets import from_roleplaying, from_sycophancy

    for ours, theirs in ((BUNDLED / "sycophancy_anthropic.jsonl", from_sycophancy(SHARED / "sycophancy" /
                                                                                  "generate_dataset.json")),
                         (BUNDLED / "deception_roleplaying.jsonl",
                          from_roleplaying(SHARED / "deception" / "roleplaying_raw_first300.json"))):
        lines = ours.read_text(encoding="utf-8").splitlines()
        assert [json.loads(x) for x in lines] == [it.to_record() for it in theirs.items]
