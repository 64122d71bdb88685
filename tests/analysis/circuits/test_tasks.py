"""Prompt-pair files, batching, metrics and the built-in task files."""

from __future__ import annotations

import json

import pytest
import torch

from sae.analysis.circuits.tasks import (
    BUILTIN,
    PromptPair,
    TaskError,
    agreement_pairs,
    capital_pairs,
    get_metric,
    load_pairs,
    logit_diff,
    make_batch,
    save_pairs,
    sycophancy,
)


def test_round_trip_and_batch(tiny_tokenizer, pairs, tmp_path):
    path = save_pairs(pairs, tmp_path / "p.jsonl")
    assert load_pairs(path) == pairs
    batch = make_batch(tiny_tokenizer, pairs[:3])
    assert batch.clean_NT.shape == batch.corrupt_NT.shape
    assert (batch.clean_NT[:, 0] == tiny_tokenizer.bos_token_id).all()
    assert not batch.mask_NT[:, 0].any()
    logits = torch.zeros(3, batch.clean_NT.shape[1], len(tiny_tokenizer))
    logits[torch.arange(3), batch.answer_pos_N, batch.correct_N] = 2.0
    assert logit_diff(logits, batch).tolist() == [2.0, 2.0, 2.0]


@pytest.mark.parametrize(("line", "message"), [
    ('{"clean": "a"}', "lacks corrupted, correct, wrong"),
    ("{not json", "not valid JSON"),
])
def test_bad_lines_say_what_to_fix(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(TaskError, match=message):
        load_pairs(path)


def test_unaligned_or_multitoken_pairs_are_refused(tiny_tokenizer):
    with pytest.raises(TaskError, match="reword one of them"):
        make_batch(tiny_tokenizer, [PromptPair("The house", "The extraordinarily long name", 5, 6)])
    with pytest.raises(TaskError, match="answers must be one token"):
        make_batch(tiny_tokenizer, [PromptPair("The house", "The house", " extraordinarily", 6)])


def test_sycophancy_is_log_odds_of_agreeing(tiny_tokenizer, pairs):
    batch = make_batch(tiny_tokenizer, [PromptPair(p.clean, p.corrupted, p.correct, p.wrong, {"agree": [7]})
                                        for p in pairs[:2]])
    logits = torch.zeros(2, batch.clean_NT.shape[1], len(tiny_tokenizer))
    # two agreeing tokens, one disagreeing, all else equal: log-odds log 2
    assert sycophancy(logits, batch).tolist() == pytest.approx([0.6931, 0.6931], abs=1e-4)
    assert get_metric("sycophancy") is sycophancy
    with pytest.raises(TaskError, match="choose one of"):
        get_metric("accuracy")


def test_builtin_files_are_the_generators_output():
    assert load_pairs(BUILTIN["capitals"]) == capital_pairs()
    agreement = load_pairs(BUILTIN["agreement"])
    assert len(agreement) >= 100 and len(load_pairs(BUILTIN["capitals"])) >= 100
    # the file is agreement_pairs(SmolLM2 tokenizer): the generator's list minus unaligned pairs
    candidates = agreement_pairs(n=10_000)
    assert all(p in candidates for p in agreement)
    assert {json.dumps(p.correct) for p in agreement} == {'" is"'}


def test_task_accuracy_counts_both_prompts(tiny_model, pairs):
    from sae.analysis.circuits.tasks import iter_batches, task_accuracy

    acc = task_accuracy(tiny_model, pairs, batch_size=5)
    wins = 0
    with torch.no_grad():
        for batch in iter_batches(tiny_model.tokenizer, pairs, 32):
            wins += int((logit_diff(tiny_model.bridge(batch.clean_NT), batch) > 0).sum())
            wins += int((logit_diff(tiny_model.bridge(batch.corrupt_NT), batch) < 0).sum())
    assert acc.accuracy == wins / (2 * len(pairs)) and acc.n_pairs == len(pairs)
